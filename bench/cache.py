#!/usr/bin/env python
"""Cost of distillation with cached teacher outputs (`cache_teacher=True`), against plain student training.

ResNet-34 teacher -> ResNet-18 student (torchvision, random init), random 32x32 inputs, SoftTarget + Attention on
two layer pairs (so features are cached too). In one process it measures the training-phase time of one epoch of:
  student   plain student training (fastai Learner, no callback)
  cached    distillation with cache_teacher=True, epochs after the first (every teacher output read from the cache)
  fresh     distillation without cache (teacher forward on every batch), for reference
plus the first cached epoch (which fills the cache). Configurations are interleaved round by round and the median
epoch time is kept. Prints the ratios to the plain student epoch and the cache's memory.

    python bench/cache.py                      # CPU
    python bench/cache.py --device cuda --batches 50 --rounds 7
"""
import argparse, statistics
import torch
from torch import nn
from fastai.data.core import DataLoaders, TfmdLists
from fastai.data.load import DataLoader
from fastai.learner import Learner
from torchvision.models import resnet18, resnet34
from fasterai_distill.losses import SoftTarget, Attention
from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
from common import TrainTimer, steady_malloc

def kd_loss(**kw): return SoftTarget(**kw) + Attention(**kw)

def main(device, n_batches, bs, size, rounds):
    torch.manual_seed(0)
    x, y = torch.randn(n_batches * bs, 3, size, size), torch.randint(0, 10, (n_batches * bs,))
    train = TfmdLists(list(zip(x, y)), None)
    def dls(): return DataLoaders(DataLoader(train, bs=bs, shuffle=True, drop_last=True), DataLoader(train[:bs], bs=bs), device=device)
    teacher = resnet34(num_classes=10).to(device)
    def learner(cb=None):
        torch.manual_seed(1)
        return Learner(dls(), resnet18(num_classes=10).to(device), loss_func=nn.CrossEntropyLoss(), cbs=cb)
    layers = ['layer2', 'layer3']
    cached_cb = KnowledgeDistillationCallback(teacher, kd_loss, layers, layers, cache_teacher=True)
    learners = {'student': learner(), 'cached': learner(cached_cb),
                'fresh': learner(KnowledgeDistillationCallback(teacher, kd_loss, layers, layers))}
    def epoch(name):
        timer = TrainTimer()
        with learners[name].no_bar(), learners[name].no_logging(): learners[name].fit(1, 1e-3, cbs=timer)
        return timer.elapsed
    for name in ('student', 'fresh'): epoch(name)  # warm-up
    first = epoch('cached')                       # fills the cache
    times = {n: [] for n in learners}
    for r in range(rounds):
        for name in (list(learners) if r % 2 == 0 else list(learners)[::-1]): times[name].append(epoch(name))
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"device={device} threads={torch.get_num_threads()} batches/epoch={n_batches} bs={bs} size={size} rounds={rounds}")
    print(f"{'student epoch':>22}: {med['student']:.3f}s")
    print(f"{'fresh distillation':>22}: {med['fresh']:.3f}s  ({med['fresh'] / med['student']:.2f}x student)")
    print(f"{'cached, 1st epoch':>22}: {first:.3f}s  ({first / med['student']:.2f}x student)")
    print(f"{'cached, later epochs':>22}: {med['cached']:.3f}s  ({med['cached'] / med['student']:.2f}x student)")
    n_items = n_batches * bs
    print(f"{'cache memory':>22}: {cached_cb.cache_nbytes / 2**20:.1f} MiB for {n_items} items "
          f"({cached_cb.cache_nbytes / n_items / 1024:.1f} KiB per item)")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu'); p.add_argument('--batches', type=int, default=16)
    p.add_argument('--bs', type=int, default=32); p.add_argument('--size', type=int, default=32)
    p.add_argument('--rounds', type=int, default=7)
    a = p.parse_args()
    steady_malloc()
    main(a.device, a.batches, a.bs, a.size, a.rounds)
