#!/usr/bin/env python
"""Cost of distillation: time and peak memory against student training + teacher inference.

ResNet-34 teacher -> ResNet-18 student (torchvision, random init), random 64x64 batches of 32.
In one run it measures, per training batch:
  student   plain student training (fastai Learner, no callback)
  teacher   teacher inference forward alone (eval, no_grad) on the same batches
  soft      distillation with SoftTarget
  attention distillation with Attention on two layer pairs (layer2, layer3)
  naive     (reference) SoftTarget with the teacher forward run with autograd on, as a naive callback would
and prints time and peak memory of each with the ratios distillation / (student + teacher).

Time: configurations are interleaved round by round in one process and the median per-batch time is kept.
Memory: each configuration runs in a fresh subprocess. On CUDA: peak of torch.cuda.max_memory_allocated above the
memory held after setup. On CPU: peak resident set size (ru_maxrss) above the resident size after setup.

    python bench/cost.py                 # CPU (and CUDA too when a GPU is present)
    python bench/cost.py --device cuda --batches 50
"""
import argparse, json, os, resource, statistics, subprocess, sys, time
import torch
from torch import nn
from fastai.callback.core import Callback

CONFIGS = ['student', 'teacher', 'soft', 'attention', 'naive']

def make_setup(device, n_batches, bs=32, size=64, seed=0):
    from torchvision.models import resnet18, resnet34
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    torch.manual_seed(seed)
    teacher, student = resnet34(num_classes=10), resnet18(num_classes=10)
    x = torch.randn(n_batches * bs, 3, size, size)
    y = torch.randint(0, 10, (n_batches * bs,))
    ds = list(zip(x, y))
    dls = DataLoaders(DataLoader(ds, bs=bs, shuffle=False, drop_last=True), DataLoader(ds[:bs], bs=bs), device=device)
    return teacher.to(device), student.to(device), dls

class TrainTimer(Callback):
    "Times the training phase only (not validation)"
    order = 100
    def before_train(self): _sync(self.dls.device); self.t0 = time.perf_counter()
    def after_train(self): _sync(self.dls.device); self.elapsed = time.perf_counter() - self.t0

def _sync(device):
    if torch.device(device).type == 'cuda': torch.cuda.synchronize()

def naive_callback(teacher, loss):
    "The reference: same callback, but the teacher forward keeps its autograd graph"
    from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
    class Naive(KnowledgeDistillationCallback):
        def before_batch(self):
            self.current_weight = self.weight
            self.teacher_pred = self.output_fn(self.teacher(*self.learn.xb))
            self.fm_t = {}
    return Naive(teacher, loss)

def run_config(name, teacher, student, dls):
    "Seconds spent on the training batches of one epoch of configuration `name`"
    from fastai.learner import Learner
    from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
    from fasterai_distill.losses import SoftTarget, Attention
    if name == 'teacher':
        teacher.eval(); _sync(dls.device); t0 = time.perf_counter()
        with torch.no_grad():
            for xb, _ in dls.train: teacher(xb)
        _sync(dls.device); return time.perf_counter() - t0
    cbs = {'student': [],
           'soft': [KnowledgeDistillationCallback(teacher, SoftTarget)],
           'attention': [KnowledgeDistillationCallback(teacher, Attention, ['layer2', 'layer3'], ['layer2', 'layer3'])],
           'naive': [naive_callback(teacher, SoftTarget)]}[name]
    timer = TrainTimer()
    learn = Learner(dls, student, loss_func=nn.CrossEntropyLoss(), cbs=cbs)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=timer)
    return timer.elapsed

def rss_bytes():
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

def memory_child(name, device, n_batches):
    "Run one configuration in this (fresh) process and print its peak memory above the memory held after setup"
    torch.set_num_threads(int(os.environ.get('BENCH_THREADS', torch.get_num_threads())))
    teacher, student, dls = make_setup(device, n_batches)
    cuda = torch.device(device).type == 'cuda'
    if cuda: torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
    else: base = rss_bytes()
    run_config(name, teacher, student, dls)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({'peak': peak - base}))

def measure_memory(name, device, n_batches):
    out = subprocess.run([sys.executable, __file__, '--memory-child', name, '--device', device, '--batches', str(n_batches)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])['peak']

def bench(device, n_batches, rounds):
    from fastprogress.fastprogress import progress_bar
    teacher, student, dls = make_setup(device, n_batches)
    times = {c: [] for c in CONFIGS}
    run_config('soft', teacher, student, dls)  # warm-up: allocator, kernels, caches
    for _ in progress_bar(range(rounds), leave=False):
        for c in CONFIGS: times[c].append(run_config(c, teacher, student, dls) / len(dls.train))
    t = {c: statistics.median(v) for c, v in times.items()}
    mem = {c: measure_memory(c, device, min(n_batches, 8)) for c in progress_bar(CONFIGS, leave=False)}
    return t, mem

def report(device, t, mem):
    dev_name = torch.cuda.get_device_name() if device == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    print(f"\n## {dev_name}: ResNet-34 -> ResNet-18, batches of 32 at 64x64, torch {torch.__version__}\n")
    print(f"| configuration | ms / batch | peak memory (MiB) |")
    print(f"|---|---|---|")
    for c in CONFIGS: print(f"| {c} | {t[c]*1e3:.1f} | {mem[c]/2**20:.0f} |")
    base_t, base_m = t['student'] + t['teacher'], mem['student'] + mem['teacher']
    print(f"\n| distillation | time / (student + teacher) | peak memory / (student + teacher) | peak memory / student |")
    print(f"|---|---|---|---|")
    for c in ('soft', 'attention', 'naive'):
        print(f"| {c} | {t[c]/base_t:.3f} | {mem[c]/base_m:.3f} | {mem[c]/mem['student']:.3f} |")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default=None, help="cpu or cuda (default: cpu, then cuda too if available)")
    p.add_argument('--batches', type=int, default=12, help="training batches per epoch")
    p.add_argument('--rounds', type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument('--memory-child', default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.memory_child: memory_child(a.memory_child, a.device, a.batches); sys.exit()
    devices = [a.device] if a.device else ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    for d in devices: report(d, *bench(d, a.batches, a.rounds))
