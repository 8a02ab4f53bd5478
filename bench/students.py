#!/usr/bin/env python
"""Cost of distilling several students at once (`Students`): one teacher forward per batch for all of them.

ResNet-34 teacher -> 3 ResNet-18 students (torchvision, random init, different seeds), random 64x64 batches of 32.
In one run it measures, per training batch:
  students   the 3 students trained one after another, without distillation (the sum of the 3 trainings)
  teacher    teacher inference forward alone (eval, no_grad) on the same batches
  at-once    `Students(s1, s2, s3)` distilled with SoftTarget by one `KnowledgeDistillationCallback`
  one-by-one the 3 distillations run one after another (3 teacher forwards per batch)
and prints the time of each with the ratios to the limit, the 3 student trainings + 1 teacher inference.
Configurations are interleaved round by round, in alternating order; the median per-batch time is kept.
The figures, the command and the machine (`machine_info()`) go to bench/students_results.json.

    python bench/students.py                 # CPU; writes bench/students_results.json
    python bench/students.py --device cuda --batches 30 --out bench/students_cuda_results.json
"""
import argparse, json, statistics, time
import torch
from torch import nn
from common import sync, TrainTimer, device_name, steady_malloc, machine_info, machine_line, provenance

N_STUDENTS = 3
CONFIGS = ['students', 'teacher', 'at-once', 'one-by-one']

def make_setup(device, n_batches, bs=32, size=64, seed=0):
    from torchvision.models import resnet18, resnet34
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    torch.manual_seed(seed)
    teacher = resnet34(num_classes=10).to(device)
    students = []
    for k in range(N_STUDENTS):
        torch.manual_seed(seed + 1 + k); students.append(resnet18(num_classes=10).to(device))
    x, y = torch.randn(n_batches * bs, 3, size, size), torch.randint(0, 10, (n_batches * bs,))
    ds = list(zip(x, y))
    dls = DataLoaders(DataLoader(ds, bs=bs, shuffle=False, drop_last=True), DataLoader(ds[:bs], bs=bs), device=device)
    return teacher, students, dls

def train_epoch(model, dls, cbs=()):
    "Seconds of one training epoch of `model`"
    from fastai.learner import Learner
    timer = TrainTimer()
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss())
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=[*cbs, timer])
    return timer.elapsed

def run_config(name, teacher, students, dls):
    "Seconds spent on the training batches of one epoch of configuration `name`"
    from fasterai_distill.all import KnowledgeDistillationCallback, SoftTarget, Students
    kd = lambda: KnowledgeDistillationCallback(teacher, SoftTarget)
    if name == 'teacher':
        teacher.eval(); sync(dls.device); t0 = time.perf_counter()
        with torch.no_grad():
            for xb, _ in dls.train: teacher(xb)
        sync(dls.device); return time.perf_counter() - t0
    if name == 'students': return sum(train_epoch(s, dls) for s in students)
    if name == 'at-once': return train_epoch(Students(*students), dls, [kd()])
    return sum(train_epoch(s, dls, [kd()]) for s in students)  # one-by-one

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cpu', help="cpu or cuda")
    p.add_argument('--batches', type=int, default=12, help="training batches per epoch")
    p.add_argument('--rounds', type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument('--threads', type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument('--out', default='bench/students_results.json', help="results file (default bench/students_results.json; '' for none)")
    a = p.parse_args()
    steady_malloc()
    if a.threads: torch.set_num_threads(a.threads)
    start, machine = time.perf_counter(), machine_info(a.device)
    print(machine_line(machine))
    teacher, students, dls = make_setup(a.device, a.batches)
    run_config('at-once', teacher, students, dls)  # warm-up
    times = {c: [] for c in CONFIGS}
    for r in range(a.rounds):
        for c in (CONFIGS if r % 2 == 0 else CONFIGS[::-1]):
            times[c].append(run_config(c, teacher, students, dls) / len(dls.train))
    t = {c: statistics.median(v) for c, v in times.items()}
    print(f"\n## {device_name(a.device)}: ResNet-34 -> {N_STUDENTS} x ResNet-18, batches of 32 at 64x64, torch {torch.__version__}, "
          f"median of {a.rounds} rounds\n")
    print("| configuration | ms / batch | time / (3 student trainings + 1 teacher inference) | per-round range |")
    print("|---|---|---|---|")
    ratios = {}
    for c in CONFIGS:
        per_round = [x / (s + te) for x, s, te in zip(times[c], times['students'], times['teacher'])]
        ratios[c] = dict(time=t[c] / (t['students'] + t['teacher']), time_range=[min(per_round), max(per_round)])
        print(f"| {c} | {t[c]*1e3:.1f} | {ratios[c]['time']:.3f} | {min(per_round):.2f}-{max(per_round):.2f} |")
    if a.out:
        out = dict(provenance(start, machine), device=device_name(a.device), batches=a.batches, rounds=a.rounds, bs=32, size=64,
                   n_students=N_STUDENTS, ms_per_batch={c: v * 1e3 for c, v in t.items()}, ratios=ratios)
        with open(a.out, 'w') as f: json.dump(out, f, indent=1)
        print(f"\nwritten to {a.out}")

if __name__ == '__main__': main()
