#!/usr/bin/env python
"""Cost of distillation: time and peak memory against student training + teacher inference.

ResNet-34 teacher -> ResNet-18 student (torchvision, random init), random 64x64 batches of 32.
In one run it measures, per training batch:
  student   plain student training (fastai Learner, no callback)
  teacher   teacher inference forward alone (eval, no_grad) on the same batches
  soft      distillation with SoftTarget (the teacher runs right after the student's forward, as the callback does)
  soft-first  (placement check) the same with the teacher run before the student's forward instead
  attention distillation with Attention on two layer pairs (layer2, layer3)

  teacher-bf16           teacher inference as `teacher_dtype=torch.bfloat16` runs it: a bfloat16 channels-last copy
  teacher-bf16-nchw      the same copy without channels-last (what the memory format brings)
  teacher-bf16-autocast  (the alternative) teacher inference under bfloat16 autocast
  soft-bf16, attention-bf16   distillation with `teacher_dtype=torch.bfloat16`
  *-fp16    the same with float16 (GPU only)

  naive     (reference) SoftTarget with the teacher run with autograd on and the loss not detaching it, so the
            backward pass also goes through the teacher, as a naive implementation would
and prints time and peak memory of each with the ratios distillation / (student + teacher).

Time: configurations are interleaved round by round in one process (in alternating order) and the median per-batch
time is kept; the table also gives the range of the ratios measured within single rounds, to show the machine's noise.
On Linux the script fixes glibc's malloc thresholds (see `bench/common.py`), which removes most page-fault noise.
Memory: peak bytes of the tensors allocated during one epoch of each configuration, above what was allocated before
it (model weights are not counted; gradients, optimizer state, activations and teacher outputs are). On CUDA:
torch.cuda.max_memory_allocated. On CPU, where torch keeps no allocator statistics: every storage created by a torch
op is tracked (a TorchDispatchMode with weak references), which counts the same thing.

    python bench/cost.py                 # CPU (and CUDA too when a GPU is present)
    python bench/cost.py --device cuda --batches 50
"""
import argparse, contextlib, statistics, time, weakref
import torch
from torch import nn
from common import sync, TrainTimer, device_name, steady_malloc
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
import torch.nn.functional as F

CONFIGS = ['student', 'teacher', 'soft', 'soft-first', 'attention', 'naive',
           'teacher-bf16', 'teacher-bf16-nchw', 'teacher-bf16-autocast', 'soft-bf16', 'attention-bf16']
CUDA_ONLY = ['teacher-fp16', 'soft-fp16', 'attention-fp16']  # float16 teachers: GPUs (the CPU's float16 kernels are slow)

def configs(device, only=None):
    cfgs = CONFIGS + (CUDA_ONLY if torch.device(device).type == 'cuda' else [])
    if only is None: return cfgs
    unknown = set(only) - set(cfgs)
    if unknown: raise SystemExit(f"unknown configuration(s) {sorted(unknown)} on {device}; known: {', '.join(cfgs)}")
    return ['student', 'teacher'] + [c for c in cfgs if c in only and c not in ('student', 'teacher')]

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



def naive_soft_target(pred, teacher_pred, T=5, **kwargs):
    "SoftTarget without detaching the teacher: gradients flow back into the teacher's graph"
    return F.kl_div(F.log_softmax(pred / T, 1), F.log_softmax(teacher_pred / T, 1), log_target=True, reduction='batchmean') * T * T

def naive_callback(teacher, loss):
    "The reference: the same callback, but the teacher forward keeps its autograd graph"
    from fasterai_distill.distillation_callback import KnowledgeDistillationCallback, Teachers
    class GradTeachers(Teachers):
        def __call__(self, xb): return [self.output_fn(m(*xb)) for m in self.models], [{} for _ in self.models], [None for _ in self.models]
    class Naive(KnowledgeDistillationCallback):
        def after_fit(self): self.teacher.zero_grad(set_to_none=True)
    kd = Naive(teacher, loss)
    kd.teachers = GradTeachers(kd.teachers.models, kd.teachers.layer_names, kd.teachers.weights)
    return kd

def teacher_first_callback(teacher, loss):
    "The other placement: the teacher runs before the student's forward (in `before_batch`), not right after it"
    from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
    class TeacherFirst(KnowledgeDistillationCallback):
        def before_batch(self):
            super().before_batch()
            self.early = self.teachers(self.learn.xb)
        def after_pred(self):  # outputs-only losses: no student features to collect
            (self.teacher_preds, self.fm_ts, _), self.early = self.early, None
            self.fm_ss, self.head_preds = [[{}] * len(self.teachers)], [[None] * len(self.teachers)]
    return TeacherFirst(teacher, loss)

def teacher_inference(teacher, dls, how):
    "Seconds of teacher inference over the training batches: in its own precision, as a bfloat16/float16 copy, or under autocast"
    from fasterai_distill.distillation_callback import _to_teacher_input, half_copy
    model, prep, ctx = teacher.eval(), (lambda x: x), contextlib.nullcontext
    if isinstance(how, torch.dtype):  # what `teacher_dtype` does: a channels-last copy at that precision (made once per fit)
        model, prep = half_copy(teacher, how), (lambda x: _to_teacher_input(x, how))
    elif how == 'nchw':  # the same bfloat16 copy in the default memory format: what channels-last brings
        model, prep = half_copy(teacher, torch.bfloat16).to(memory_format=torch.contiguous_format), (lambda x: x.to(torch.bfloat16))
    elif how == 'autocast':
        ctx = lambda: torch.autocast(torch.device(dls.device).type, dtype=torch.bfloat16)
    sync(dls.device); t0 = time.perf_counter()
    with torch.no_grad(), ctx():
        for xb, _ in dls.train: model(prep(xb))
    sync(dls.device); return time.perf_counter() - t0

def run_config(name, teacher, student, dls):
    "Seconds spent on the training batches of one epoch of configuration `name`"
    from fastai.learner import Learner
    from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
    from fasterai_distill.losses import SoftTarget, Attention
    if name.startswith('teacher'):
        return teacher_inference(teacher, dls, {'teacher': None, 'teacher-bf16': torch.bfloat16, 'teacher-fp16': torch.float16,
                                                'teacher-bf16-autocast': 'autocast', 'teacher-bf16-nchw': 'nchw'}[name])
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(name.rsplit('-', 1)[-1])
    base = name.rsplit('-', 1)[0] if dtype else name
    cbs = {'student': [],
           'soft': [KnowledgeDistillationCallback(teacher, SoftTarget, teacher_dtype=dtype)],
           'attention': [KnowledgeDistillationCallback(teacher, Attention, ['layer2', 'layer3'], ['layer2', 'layer3'], teacher_dtype=dtype)],
           'soft-first': [teacher_first_callback(teacher, SoftTarget)],
           'naive': [naive_callback(teacher, naive_soft_target)]}[base]
    timer = TrainTimer()
    learn = Learner(dls, student, loss_func=nn.CrossEntropyLoss(), cbs=cbs)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=timer)
    return timer.elapsed

class TensorMemory(TorchDispatchMode):
    "Live and peak bytes of the tensor storages created by torch ops while active (CPU has no allocator statistics)"
    def __init__(self, existing=()): # Tensors allocated before: ops returning views of them (`detach`, in-place updates) allocate nothing
        super().__init__(); self.live = self.peak = 0; self._refs = {}
        self._existing = {t.untyped_storage().data_ptr() for t in existing}
    def _free(self, key, nbytes): self._refs.pop(key, None); self.live -= nbytes
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor): continue
            s = t.untyped_storage()
            key = s.data_ptr()
            if key == 0 or key in self._refs or key in self._existing: continue
            n = s.nbytes()
            self._refs[key] = weakref.ref(s, lambda _, k=key, n=n: self._free(k, n))
            self.live += n; self.peak = max(self.peak, self.live)
        return out

def measure_memory(name, teacher, student, dls):
    "Peak bytes allocated while running one epoch of configuration `name`, above what was allocated before"
    if torch.device(dls.device).type == 'cuda':
        torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        run_config(name, teacher, student, dls)
        return torch.cuda.max_memory_allocated() - base
    weights = [t for m in (teacher, student) for t in (*m.parameters(), *m.buffers())]
    with TensorMemory(weights) as tm: run_config(name, teacher, student, dls)
    return tm.peak

def bench(device, n_batches, rounds, only=None):
    from fastprogress.fastprogress import progress_bar
    teacher, student, dls = make_setup(device, n_batches)
    cfgs = configs(device, only)
    times = {c: [] for c in cfgs}
    run_config('soft', teacher, student, dls)  # warm-up: allocator, kernels, caches
    for r in progress_bar(range(rounds), leave=False):
        for c in (cfgs if r % 2 == 0 else cfgs[::-1]):  # alternate the order: slow drifts hit every configuration
            times[c].append(run_config(c, teacher, student, dls) / len(dls.train))
    mem = {c: measure_memory(c, teacher, student, dls) for c in progress_bar(cfgs, leave=False)}
    return times, mem

def report(device, times, mem):
    t = {c: statistics.median(v) for c, v in times.items()}
    print(f"\n## {device_name(device)}: ResNet-34 -> ResNet-18, batches of 32 at 64x64, torch {torch.__version__}, "
          f"median of {len(times['student'])} rounds\n")
    print(f"| configuration | ms / batch | peak memory (MiB) |")
    print(f"|---|---|---|")
    for c in times: print(f"| {c} | {t[c]*1e3:.1f} | {mem[c]/2**20:.0f} |")
    base_m = mem['student'] + mem['teacher']
    print(f"\nRatios to the fp32 limit, student training + fp32 teacher inference, measured in the same run:\n")
    print(f"| configuration | time / (student + teacher) | per-round range | peak memory / (student + teacher) | peak memory / student |")
    print(f"|---|---|---|---|---|")
    for c in [c for c in times if c not in ('student', 'teacher')]:
        # the ratio of medians, and the range of the ratios within each round (how much the machine's noise moves it)
        per_round = [x / (s + te) for x, s, te in zip(times[c], times['student'], times['teacher'])]
        print(f"| {c} | {t[c] / (t['student'] + t['teacher']):.3f} | {min(per_round):.2f}-{max(per_round):.2f} "
              f"| {mem[c]/base_m:.3f} | {mem[c]/mem['student']:.3f} |")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default=None, help="cpu or cuda (default: cpu, then cuda too if available)")
    p.add_argument('--batches', type=int, default=24, help="training batches per epoch")
    p.add_argument('--threads', type=int, default=None, help="CPU threads for torch (default: torch's choice, one per core)")
    p.add_argument('--rounds', type=int, default=7, help="interleaved rounds; the median is reported")
    p.add_argument('--configs', default=None, help="comma-separated configurations to run (default: all; student and teacher always run)")
    a = p.parse_args()
    steady_malloc()
    if a.threads: torch.set_num_threads(a.threads)
    devices = [a.device] if a.device else ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    only = a.configs.split(',') if a.configs else None
    for d in devices: report(d, *bench(d, a.batches, a.rounds, only))
