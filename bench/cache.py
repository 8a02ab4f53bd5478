#!/usr/bin/env python
"""Cost of distillation with the teachers' outputs cached in memory (`cache_teacher=True`) or stored on disk
(`cache_teacher='path'`), against plain student training; and the store's size per item.

ResNet-34 teacher -> ResNet-18 student (torchvision, random init), random 32x32 inputs, SoftTarget + Attention on two
layer pairs (so features are kept too). One process times, round by round in alternating order, one training epoch of:
  student        plain student training (no callback)
  fresh          distillation without cache (a teacher forward on every batch)
  memory-first   cache_teacher=True, first epoch (fills the cache)
  memory         cache_teacher=True, later epochs (every output read from memory)
  store-first    cache_teacher=<a new folder>: first epoch, filling the store
and `fill_teacher_store` filling a new store ahead of training (the teacher over the training set, no student).
Then a second process opens the last full store and times `student` against `store` (every output read from disk,
the teacher's forwards counted) and `memory` (the in-memory cache, filled in a warm-up epoch). Each ratio is the median over rounds of the ratio within a round, where the
configurations run seconds apart. Results go to bench/cache_results.json.

    python bench/cache.py                      # CPU, 7 rounds (about 4 min on 2 cores)
    python bench/cache.py --rounds 3           # the committed CPU figures
    python bench/cache.py --device cuda --batches 50 --rounds 5 --out bench/cache_results_cuda.json   # the committed GPU ones
"""
import argparse, json, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import torch
from torch import nn
from fastai.data.core import DataLoaders, TfmdLists
from fastai.data.load import DataLoader
from fastai.learner import Learner
from torchvision.models import resnet18, resnet34
from fasterai_distill.losses import SoftTarget, Attention
from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
from fasterai_distill.callback.store import fill_teacher_store, weights_fingerprint
from common import provenance, TrainTimer, steady_malloc, sync, device_name

LAYERS = ['layer2', 'layer3']

def kd_loss(**kw): return SoftTarget(**kw) + Attention(**kw)

def setup(a):
    "The same data and teacher in every process (fixed seeds)"
    torch.manual_seed(0)
    n = a.batches * a.bs
    x, y = torch.randn(n, 3, a.size, a.size), torch.randint(0, 10, (n,))
    train = TfmdLists(list(zip(x, y)), None)
    dls = lambda: DataLoaders(DataLoader(train, bs=a.bs, shuffle=True, drop_last=True), DataLoader(train[:a.bs], bs=a.bs), device=a.device)
    torch.manual_seed(1)
    return dls, resnet34(num_classes=10).to(a.device)

def learner(dls, cb=None):
    torch.manual_seed(2)
    dls = dls()
    return Learner(dls, resnet18(num_classes=10).to(dls.device), loss_func=nn.CrossEntropyLoss(), cbs=cb)

def epoch(learn):
    "Seconds of one training epoch (validation left out)"
    timer = TrainTimer()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=timer)
    return timer.elapsed

def ratios(times):
    "Per configuration: the median over rounds of its time over the student's in the same round"
    return {n: statistics.median(t / s for t, s in zip(ts, times['student'])) for n, ts in times.items()}

def disk_bytes(path): return sum(f.stat().st_blocks * 512 for f in Path(path).iterdir())

def main(a):
    dls, teacher = setup(a)
    tmp = Path(tempfile.mkdtemp(dir=a.dir))
    try: return measure(a, dls, teacher, tmp)
    finally: shutil.rmtree(tmp)

def measure(a, dls, teacher, tmp):
    memory = KnowledgeDistillationCallback(teacher, kd_loss, LAYERS, LAYERS, cache_teacher=True)
    learners = {'student': learner(dls), 'fresh': learner(dls, KnowledgeDistillationCallback(teacher, kd_loss, LAYERS, LAYERS)),
                'memory': learner(dls, memory)}
    store_learn = learner(dls)
    for n in ('student', 'fresh', 'memory'): epoch(learners[n])  # warm-up; fills the memory cache
    times = {n: [] for n in ('student', 'fresh', 'memory-first', 'memory', 'store-first', 'fill')}
    def store_first(r):
        kd = KnowledgeDistillationCallback(teacher, kd_loss, LAYERS, LAYERS, cache_teacher=tmp/f'during{r}')
        store_learn.add_cb(kd)
        try: return epoch(store_learn)
        finally: store_learn.remove_cb(kd)
    def fill(r):
        train = dls().train
        sync(a.device); t0 = time.perf_counter()
        fill_teacher_store(train, teacher, tmp/f'ahead{r}', LAYERS, progress=False)
        sync(a.device); return time.perf_counter() - t0
    def memory_first(r): memory.clear_cache(); return epoch(learners['memory'])
    runs = dict(student=lambda r: epoch(learners['student']), fresh=lambda r: epoch(learners['fresh']),
                **{'memory-first': memory_first, 'memory': lambda r: epoch(learners['memory']), 'store-first': store_first, 'fill': fill})
    for r in range(a.rounds):
        for n in (list(runs) if r % 2 == 0 else list(runs)[::-1]): times[n].append(runs[n](r))
    store = tmp/f'ahead{a.rounds - 1}'
    n_items = a.batches * a.bs
    t0 = time.perf_counter(); weights_fingerprint(teacher); hash_s = time.perf_counter() - t0
    second = json.loads(subprocess.run([sys.executable, __file__, '--read', str(store), *sys.argv[1:]], check=True,
                                       capture_output=True, text=True).stdout.splitlines()[-1])
    sizes = {f.name: f.stat().st_size for f in sorted(store.iterdir())}
    return dict(device=device_name(a.device), ms_per_epoch={n: 1e3 * statistics.median(t) for n, t in times.items()},
                ratios=ratios(times), second_process=second, n_items=n_items, teacher_hash_s=hash_s,
                store_bytes_per_item=disk_bytes(store) / n_items, store_files=sizes,
                memory_bytes_per_item=memory.cache_nbytes / n_items)

def read_store(a):
    "The second process: plain student epochs against epochs that read every teacher output from the store at `a.read`, and from memory"
    dls, teacher = setup(a)
    counting, forwards = [False], [0]
    teacher.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + counting[0]))
    learners = {'student': learner(dls), 'store': learner(dls, KnowledgeDistillationCallback(teacher, kd_loss, LAYERS, LAYERS, cache_teacher=a.read)),
                'memory': learner(dls, KnowledgeDistillationCallback(teacher, kd_loss, LAYERS, LAYERS, cache_teacher=True))}
    def run(n):
        counting[0] = n == 'store'  # the teacher's forwards in the epochs that read the store
        return epoch(learners[n])
    for n in learners: run(n)  # warm-up; fills the memory cache
    times = {n: [] for n in learners}
    for r in range(a.rounds):
        for n in (list(learners) if r % 2 == 0 else list(learners)[::-1]): times[n].append(run(n))
    print(json.dumps(dict(ms_per_epoch={n: 1e3 * statistics.median(t) for n, t in times.items()}, ratio=ratios(times)['store'],
                          memory_ratio=ratios(times)['memory'], teacher_forwards=forwards[0], epochs=a.rounds + 1)))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu'); p.add_argument('--batches', type=int, default=16)
    p.add_argument('--bs', type=int, default=32); p.add_argument('--size', type=int, default=32)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--dir', default=None, help='where the stores go (a temporary folder in it; default: the system temporary folder)')
    p.add_argument('--out', default=str(Path(__file__).parent/'cache_results.json'))
    p.add_argument('--read', default=None, help=argparse.SUPPRESS)  # the second process
    a = p.parse_args()
    steady_malloc()
    if a.read: read_store(a); sys.exit()
    t0 = time.perf_counter()
    res = main(a)
    out = dict(provenance(t0, device=a.device), batches=a.batches, bs=a.bs, size=a.size, rounds=a.rounds, results=[res])
    Path(a.out).write_text(json.dumps(out, indent=1) + '\n')
    r, s = res['ratios'], res['second_process']
    print(f"{res['device']}: {a.batches} batches of {a.bs} at {a.size}x{a.size}, {a.rounds} rounds; ratios to the plain student epoch:")
    for n, v in r.items(): print(f"  {n:>13}: {v:.3f}  ({res['ms_per_epoch'][n]:.0f} ms)")
    print(f"  second process reading the store: {s['ratio']:.3f} (in-memory cache there: {s['memory_ratio']:.3f}), "
          f"teacher forwards: {s['teacher_forwards']} in {s['epochs']} epochs")
    print(f"  store on disk: {res['store_bytes_per_item'] / 1024:.1f} KiB per item; in memory: {res['memory_bytes_per_item'] / 1024:.1f} KiB")
    print(f"wrote {a.out}")
