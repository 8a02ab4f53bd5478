#!/usr/bin/env python
"""Throughput of distillation in mixed precision: images/s against plain student training, fp32, fp16 and bf16.

ResNet-34 teacher -> ResNet-18 student (torchvision, random init), random 224x224 batches, on a GPU. For each
precision (fp32; `learn.to_fp16()`; `learn.to_bf16()`) it measures the training images per second of
  student   plain student training (fastai Learner, no callback)
  soft      distillation with SoftTarget (teacher forward under the same autocast)
  attention distillation with Attention on two layer pairs (layer2, layer3)
and the teacher's inference images/s under the same autocast. `ideal` is what running student training and teacher
inference back to back would give, 1 / (1/student + 1/teacher): the best distillation can do without overlap.
Configurations are interleaved round by round in one process and the median epoch is kept. The batches are made on
the device, so no host-to-device copy is timed. The figures, the command and the machine (`machine_info()`) go to
bench/precision_results.json.

    python bench/precision.py                                   # on a CUDA GPU; writes bench/precision_results.json
    python bench/precision.py --bs 128 --batches 40 --channels-last --out ''
    python bench/precision.py --device cpu --size 32 --bs 8 --batches 2 --rounds 1 --out ''   # a quick check of the script on CPU
"""
import argparse, json, statistics, sys, time
import torch
from torch import nn
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.callback.fp16 import MixedPrecision  # registers `Learner.to_fp16` / `Learner.to_bf16`
from fastai.callback.channelslast import ChannelsLast  # registers `Learner.to_channelslast`
from torchvision.models import resnet18, resnet34
from fasterai_distill.losses import SoftTarget, Attention
from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
from common import sync, TrainTimer, device_name, machine_info, machine_line, provenance

PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
CONFIGS = ['student', 'soft', 'attention']

def make_setup(device, n_batches, bs, size):
    torch.manual_seed(0)
    x, y = torch.randn(n_batches * bs, 3, size, size), torch.randint(0, 10, (n_batches * bs,))
    ds = list(zip(x.to(device), y.to(device)))
    dls = DataLoaders(DataLoader(ds, bs=bs, shuffle=False, drop_last=True), DataLoader(ds[:bs], bs=bs), device=device)
    return resnet34(num_classes=10).to(device), dls

def learner(config, precision, teacher, dls, channels_last):
    torch.manual_seed(1)
    layers = ['layer2', 'layer3']
    cbs = {'student': [], 'soft': [KnowledgeDistillationCallback(teacher, SoftTarget)],
           'attention': [KnowledgeDistillationCallback(teacher, Attention, layers, layers)]}[config]
    learn = Learner(dls, resnet18(num_classes=10).to(dls.device), loss_func=nn.CrossEntropyLoss(), cbs=cbs)
    if precision == 'fp16': learn.to_fp16()
    if precision == 'bf16': learn.to_bf16()
    if channels_last: learn.to_channelslast(use_amp=False)
    return learn

def train_epoch(learn):
    "Seconds spent on the training batches of one epoch"
    timer = TrainTimer()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=timer)
    return timer.elapsed

def teacher_epoch(teacher, dls, precision, channels_last):
    "Seconds of teacher inference over the training batches, under the precision's autocast"
    dtype, dev = PRECISIONS[precision], torch.device(dls.device).type
    teacher.eval()
    if channels_last: teacher.to(memory_format=torch.channels_last)
    sync(dls.device); t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(dev, dtype=dtype or torch.float32, enabled=dtype is not None):
        for xb, _ in dls.train: teacher(xb.contiguous(memory_format=torch.channels_last) if channels_last else xb)
    sync(dls.device); return time.perf_counter() - t0

def bench(device, n_batches, bs, size, rounds, precisions, channels_last):
    from fastprogress.fastprogress import progress_bar
    teacher, dls = make_setup(device, n_batches, bs, size)
    n_images = n_batches * bs
    results = {}
    for prec in progress_bar(precisions, leave=False):
        learners = {c: learner(c, prec, teacher, dls, channels_last) for c in CONFIGS}
        for learn in learners.values(): train_epoch(learn)  # warm-up: cudnn autotuning, allocator, kernels
        teacher_epoch(teacher, dls, prec, channels_last)
        times = {c: [] for c in CONFIGS + ['teacher']}
        for _ in range(rounds):
            for c in CONFIGS: times[c].append(train_epoch(learners[c]))
            times['teacher'].append(teacher_epoch(teacher, dls, prec, channels_last))
        results[prec] = {c: n_images / statistics.median(t) for c, t in times.items()}
    return results

def report(device, results, bs, size, channels_last)->dict:
    "Print the table; return the ratios it shows, per precision"
    cl = ', channels-last' if channels_last else ''
    print(f"\n## {device_name(device)}: ResNet-34 -> ResNet-18, batches of {bs} at {size}x{size}{cl}, torch {torch.__version__}\n")
    print("| precision | student img/s | teacher inference img/s | ideal img/s | SoftTarget img/s | Attention img/s | SoftTarget / ideal | Attention / ideal | SoftTarget / student |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = {}
    for prec, r in results.items():
        ideal = 1 / (1 / r['student'] + 1 / r['teacher'])
        ratios[prec] = dict(ideal=ideal, soft_vs_ideal=r['soft'] / ideal, attention_vs_ideal=r['attention'] / ideal, soft_vs_student=r['soft'] / r['student'])
        print(f"| {prec} | {r['student']:.0f} | {r['teacher']:.0f} | {ideal:.0f} | {r['soft']:.0f} | {r['attention']:.0f} "
              f"| {r['soft'] / ideal:.3f} | {r['attention'] / ideal:.3f} | {r['soft'] / r['student']:.3f} |")
    return ratios

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda', help="cuda (default) or cpu (only to check the script: CPU autocast timings say little)")
    p.add_argument('--batches', type=int, default=30, help="training batches per epoch")
    p.add_argument('--bs', type=int, default=64, help="batch size")
    p.add_argument('--size', type=int, default=224, help="image size")
    p.add_argument('--rounds', type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument('--precisions', nargs='+', default=list(PRECISIONS), choices=list(PRECISIONS))
    p.add_argument('--channels-last', action='store_true', help="train and run the teacher in channels-last memory format")
    p.add_argument('--out', default='bench/precision_results.json', help="results file (default bench/precision_results.json; '' for none)")
    a = p.parse_args()
    if torch.device(a.device).type == 'cuda' and not torch.cuda.is_available():
        sys.exit("bench/precision.py measures mixed precision on a GPU, and torch sees none here. "
                 "`--device cpu --size 32 --bs 8 --batches 2 --rounds 1 --out ''` checks that the script runs.")
    start, machine = time.perf_counter(), machine_info(a.device)
    print(machine_line(machine))
    results = bench(a.device, a.batches, a.bs, a.size, a.rounds, a.precisions, a.channels_last)
    ratios = report(a.device, results, a.bs, a.size, a.channels_last)
    if a.out:
        out = dict(provenance(start, machine), device=device_name(a.device), batches=a.batches, bs=a.bs, size=a.size, rounds=a.rounds,
                   channels_last=a.channels_last, images_per_s=results, ratios=ratios)
        with open(a.out, 'w') as f: json.dump(out, f, indent=1)
        print(f"\nwritten to {a.out}")
