#!/usr/bin/env python
"""Cost of distillation: time and peak memory against student training + teacher inference.

ResNet-34 teacher -> ResNet-18 student (torchvision, random init), random 64x64 batches of 32 (`--size`, `--bs`).
In one run it measures, per training batch:
  student   plain student training (fastai Learner, no callback)
  teacher   teacher inference forward alone (eval, no_grad) on the same batches
  soft      distillation with SoftTarget (the teacher runs just before the student's forward, as the callback does)
  soft-after  (placement check) the same with the teacher run right after the student's forward instead
  attention distillation with Attention on two layer pairs (layer2, layer3)
  student-vit, fitnet-vit   (CNN -> ViT) a timm ViT-Tiny student cut to 4 blocks (64x64 images in 8x8 patches: an 8x8
            grid of 192-d tokens; about ResNet-18's cost here) trained alone, and distilled with FitNet from the
            teacher's layer2 (128 channels, 8x8) to its blocks.2 through an adapter (`adapters=True`: the tokens laid out
            on their grid, a 1x1 convolution 192 -> 128); its ratios are to student-vit + teacher (needs timm)

  teacher-bf16           teacher inference as `teacher_dtype=torch.bfloat16` runs it: a bfloat16 channels-last copy
  teacher-bf16-nchw      the same copy without channels-last (what the memory format brings)
  teacher-bf16-autocast  (the alternative) teacher inference under bfloat16 autocast
  soft-bf16, attention-bf16   distillation with `teacher_dtype=torch.bfloat16`
  *-fp16    the same with float16 (on a GPU; on a CPU only when asked for: `--configs precision` or by name)

  naive     (reference) SoftTarget with the teacher run with autograd on and the loss not detaching it, so the
            backward pass also goes through the teacher, as a naive implementation would
and prints time and peak memory of each with the ratios distillation / (student + teacher).

Does a half-precision teacher help on this machine? `--configs precision` runs only what answers that (student,
teacher and SoftTarget at float32, bfloat16, and float16 where the device has float16 kernels) and ends with one line
per precision, e.g. "teacher_dtype=torch.bfloat16 helps here: 0.86 of the float32 limit" or "makes distillation
slower here: 2.3x the float32 limit": a CPU without bfloat16 kernels (AVX2 only) runs a bfloat16 teacher in slow
generic code. `--isa avx2` re-runs the script as such a CPU (oneDNN's and ATen's instruction-set limits, see
`bench/common.py`), to see that case on any x86 machine. The results file records the machine (`machine_info()`).

Time: configurations are interleaved round by round in one process (in alternating order). The ms / batch column is
the median over the rounds; the ratios are the median of the ratios measured within each round, whose configurations
run seconds apart: a shared machine's speed swings by 10-30 % over tens of seconds, and within a round those swings
cancel out, so many short rounds (the default: 21 rounds of 8 batches) pin the ratios down better than a few long ones.
On the CPU the script also times the phases of each training batch (`PhaseTimer` in `bench/common.py`): the student's
forward, the teachers (what runs between the batch's start and the loss, outside the student's forward), the backward
and the optimizer step. It also prints the device's matrix-product throughput at float32 and bfloat16: about the
most a half-precision teacher can gain there.
On Linux the script fixes glibc's malloc thresholds (see `bench/common.py`), which removes most page-fault noise.
Memory: peak bytes of the tensors allocated during one epoch of each configuration, above what was allocated before
it (model weights are not counted; gradients, optimizer state, activations and teacher outputs are). On CUDA:
torch.cuda.max_memory_allocated. On CPU, where torch keeps no allocator statistics: every storage created by a torch
op is tracked (a TorchDispatchMode with weak references), which counts the same thing.

    python bench/cost.py                 # CPU (and CUDA too when a GPU is present); writes bench/cost_results.json
    python bench/cost.py --configs precision --out ''       # does teacher_dtype help here? (a few minutes)
    python bench/cost.py --configs precision --isa avx2 --rounds 11 --out bench/cost_avx2_results.json
    python bench/cost.py --device cuda --out bench/cost_cuda_results.json
"""
import argparse, contextlib, json, statistics, time, weakref
import torch
from torch import nn
from common import sync, TrainTimer, PhaseTimer, device_name, steady_malloc, limit_isa, ISA_LIMITS, machine_info, machine_line, provenance
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
import torch.nn.functional as F

CONFIGS = ['student', 'teacher', 'soft', 'soft-after', 'attention', 'naive',
           'teacher-bf16', 'teacher-bf16-nchw', 'teacher-bf16-autocast', 'soft-bf16', 'attention-bf16']
FP16 = ['teacher-fp16', 'soft-fp16', 'attention-fp16']  # by default on GPUs only (most CPUs lack float16 kernels)
VIT = ['student-vit', 'fitnet-vit']  # on request (`--configs fitnet-vit`): a ViT student, its own limit
BASELINE = {'fitnet-vit': 'student-vit'}  # configurations whose limit is another student's training + teacher inference
# `--configs precision`: what it takes to see whether `teacher_dtype` helps on this machine
PRECISION = ['student', 'teacher', 'soft', 'teacher-bf16', 'soft-bf16', 'teacher-fp16', 'soft-fp16']

def has_fp16(device)->bool:
    "Whether float16 teachers are worth measuring on `device`: a GPU, or a CPU with oneDNN's float16 kernels"
    return torch.device(device).type == 'cuda' or bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())

def configs(device, only=None):
    "The configurations to run: all by default, else `only` (names, or 'precision'), always with student and teacher"
    cfgs = CONFIGS + FP16 + VIT
    if only is None: return [c for c in CONFIGS + FP16 if c not in FP16 or torch.device(device).type == 'cuda']
    if 'precision' in only: only = [c for c in only if c != 'precision'] + [c for c in PRECISION if c not in FP16 or has_fp16(device)]
    unknown = set(only) - set(cfgs)
    if unknown: raise SystemExit(f"unknown configuration(s) {sorted(unknown)}; known: precision, {', '.join(cfgs)}")
    wanted = set(only) | {BASELINE[c] for c in only if c in BASELINE}  # a configuration runs with its own limit's student
    return ['student', 'teacher'] + [c for c in cfgs if c in wanted and c not in ('student', 'teacher')]

def make_setup(device, n_batches, bs=32, size=64, seed=0):
    from torchvision.models import resnet18, resnet34
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    torch.manual_seed(seed)
    teacher, student = resnet34(num_classes=10), resnet18(num_classes=10)
    x = torch.randn(n_batches * bs, 3, size, size)
    y = torch.randint(0, 10, (n_batches * bs,))
    ds = list(zip(x.to(device), y.to(device)))  # on a GPU the batches are made there: no host-to-device copies timed
    dls = DataLoaders(DataLoader(ds, bs=bs, shuffle=False, drop_last=True), DataLoader(ds[:bs], bs=bs), device=device)
    return teacher.to(device), student.to(device), dls

_VITS = {}
def vit_student(device, seed=0):
    "The CNN -> ViT configurations' student: timm's ViT-Tiny, 4 blocks, on 64x64 images in 8x8 patches, random init (made once per device)"
    if device not in _VITS:
        import timm
        torch.manual_seed(seed)
        _VITS[device] = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=64, patch_size=8, depth=4, num_classes=10).to(device)
    return _VITS[device]


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

def teacher_after_callback(teacher, loss):
    "The other placement: the teacher runs right after the student's forward (in `after_pred`), not just before it"
    from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
    class TeacherAfter(KnowledgeDistillationCallback):
        @property
        def parts(self): return [p for p in super().parts if p is not self.teacher_run]
        def after_pred(self): self.run_teachers(); super().after_pred()
    return TeacherAfter(teacher, loss)

def teacher_inference(teacher, dls, how):
    "Seconds of teacher inference over the training batches: in its own precision, as a bfloat16/float16 copy, or under autocast"
    from fasterai_distill.callback.teachers import _to_teacher_input, half_copy
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

def run_config(name, teacher, student, dls, phases=None):
    "Seconds spent on the training batches of one epoch of configuration `name` (and, in `phases`, where they went)"
    from fastai.learner import Learner
    from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
    from fasterai_distill.losses import SoftTarget, Attention, FitNet
    if name.startswith('teacher'):
        return teacher_inference(teacher, dls, {'teacher': None, 'teacher-bf16': torch.bfloat16, 'teacher-fp16': torch.float16,
                                                'teacher-bf16-autocast': 'autocast', 'teacher-bf16-nchw': 'nchw'}[name])
    if name.endswith('-vit'): student = vit_student(dls.device)
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(name.rsplit('-', 1)[-1])
    base = name.rsplit('-', 1)[0] if dtype else name
    cbs = {'student': [], 'student-vit': [],
           'fitnet-vit': [KnowledgeDistillationCallback(teacher, FitNet, 'blocks.2', 'layer2', adapters=True)],
           'soft': [KnowledgeDistillationCallback(teacher, SoftTarget, teacher_dtype=dtype)],
           'attention': [KnowledgeDistillationCallback(teacher, Attention, ['layer2', 'layer3'], ['layer2', 'layer3'], teacher_dtype=dtype)],
           'soft-after': [teacher_after_callback(teacher, SoftTarget)],
           'naive': [naive_callback(teacher, naive_soft_target)]}[base]
    timer = TrainTimer()
    learn = Learner(dls, student, loss_func=nn.CrossEntropyLoss(), cbs=cbs)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=[timer] + ([phases] if phases else []))
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
    weights = [t for m in (teacher, student, *_VITS.values()) for t in (*m.parameters(), *m.buffers())]
    with TensorMemory(weights) as tm: run_config(name, teacher, student, dls)
    return tm.peak

def bench(device, n_batches, rounds, only=None, bs=32, size=64):
    from fastprogress.fastprogress import progress_bar
    teacher, student, dls = make_setup(device, n_batches, bs, size)
    cfgs = configs(device, only)
    times, phases = {c: [] for c in cfgs}, {c: [] for c in cfgs if not c.startswith('teacher')}
    on_cpu = torch.device(device).type == 'cpu'  # the phase marks would need device syncs on a GPU
    run_config('soft', teacher, student, dls)  # warm-up: allocator, kernels, caches
    for r in progress_bar(range(rounds), leave=False):
        for c in (cfgs if r % 2 == 0 else cfgs[::-1]):  # alternate the order: slow drifts hit every configuration
            pt = PhaseTimer() if on_cpu and c in phases else None
            times[c].append(run_config(c, teacher, student, dls, pt) / len(dls.train))
            if pt: phases[c].append(pt.medians())
    mem = {c: measure_memory(c, teacher, student, dls) for c in progress_bar(cfgs, leave=False)}
    return times, mem, phases if on_cpu else None

def _matmul_seconds(device, dtype, n, reps=1)->float:
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b; sync(device); t0 = time.perf_counter()
    for _ in range(reps): a @ b
    sync(device); return (time.perf_counter() - t0) / reps

def matmul_rate(device, dtype, n=2048, seconds=1.)->float:
    "GFLOP/s of n x n matrix products at `dtype` on `device` (about `seconds` of them): the ceiling for a teacher at that precision"
    # Where a precision has no fast kernels (bfloat16 on an AVX2-only CPU), one 2048 x 2048 product takes minutes:
    # a smaller n, from a 256 x 256 probe, keeps this to about `seconds`.
    t = _matmul_seconds(device, dtype, 256)
    while n > 256 and t * (n / 256)**3 > seconds: n //= 2
    reps = max(1, min(10, int(seconds / (t * (n / 256)**3))))
    return 2 * n**3 / _matmul_seconds(device, dtype, n, reps) / 1e9

def per_round(times, c, base)->list:
    "The ratios of configuration `c` to the sum of the configurations `base`, one per round, sorted"
    return sorted(x / sum(b) for x, *b in zip(times[c], *(times[k] for k in base)))

HALF = {'bf16': torch.bfloat16, 'fp16': torch.float16}

def half_precision(device, times)->dict:
    "Per half precision measured: SoftTarget distillation and teacher inference against float32, and the verdict"
    out = {}
    for tag, dtype in HALF.items():
        if f'soft-{tag}' not in times or 'soft' not in times: continue
        soft, soft32 = (statistics.median(per_round(times, c, ['student', 'teacher'])) for c in (f'soft-{tag}', 'soft'))
        teacher = statistics.median(per_round(times, f'teacher-{tag}', ['teacher'])) if f'teacher-{tag}' in times else None
        verdict = 'helps' if soft < 0.97 * soft32 else 'slower' if soft > 1.03 * soft32 else 'same'
        out[str(dtype).replace('torch.', '')] = dict(soft=soft, soft_float32=soft32, teacher=teacher, verdict=verdict)
    from fasterai_distill.callback.teachers import auto_teacher_dtype  # what the callback's teacher_dtype='auto' picks
    auto = auto_teacher_dtype(device)
    out['auto'] = str(auto).replace('torch.', '') if auto else 'float32'
    return out

def verdict_lines(hp)->list:
    "The half-precision verdicts as sentences"
    lines = []
    for name, v in hp.items():
        if name == 'auto': continue
        what = {'helps': 'helps here', 'slower': 'makes distillation slower here', 'same': 'changes nothing measurable here'}[v['verdict']]
        times = f"{v['soft']:.2f} of" if v['soft'] < 1 else f"{v['soft']:.2f}x"
        teacher = f"; the teacher's inference alone takes {v['teacher']:.2f}x its float32 time" if v['teacher'] else ''
        lines.append(f"teacher_dtype=torch.{name} {what}: {times} the float32 limit with SoftTarget "
                     f"({v['soft_float32']:.2f} with the float32 teacher){teacher}.")
    auto = hp['auto']
    lines.append(f"teacher_dtype='auto' would run the teacher at {'torch.' + auto if auto != 'float32' else 'float32 (None)'} here.")
    return lines

def report(device, times, mem, phases=None, bs=32, size=64)->dict:
    "Print the tables for one device; return what they show, for `bench/cost_results.json`"
    t = {c: statistics.median(v) for c, v in times.items()}
    out = dict(device=device_name(device), ms_per_batch={c: t[c] * 1e3 for c in t}, peak_mib={c: mem[c] / 2**20 for c in mem}, ratios={})
    print(f"\n## {device_name(device)}: ResNet-34 -> ResNet-18, batches of {bs} at {size}x{size}, torch {torch.__version__}, "
          f"median of {len(times['student'])} rounds\n")
    print(f"| configuration | ms / batch | peak memory (MiB) |")
    print(f"|---|---|---|")
    for c in times: print(f"| {c} | {t[c]*1e3:.1f} | {mem[c]/2**20:.0f} |")
    limit_m = lambda c: mem[BASELINE.get(c, 'student')] + mem['teacher']
    print(f"\nRatios to the fp32 limit, student training + fp32 teacher inference (the -vit rows: the ViT student's training), "
          f"measured in the same run. Time: the median "
          f"of the ratios measured within each round (the configurations of a round run seconds apart, so the machine's "
          f"slow swings cancel out), with the middle half and the whole range of those ratios:\n")
    print(f"| configuration | time / (student + teacher) | middle half of rounds | all rounds | peak memory / (student + teacher) | peak memory / student |")
    print(f"|---|---|---|---|---|---|")
    for c in [c for c in times if c not in ('student', 'teacher', *BASELINE.values())]:
        rounds = per_round(times, c, [BASELINE.get(c, 'student'), 'teacher'])
        q1, _, q3 = statistics.quantiles(rounds, n=4, method='inclusive') if len(rounds) > 1 else rounds * 3
        print(f"| {c} | {statistics.median(rounds):.3f} | {q1:.2f}-{q3:.2f} | {rounds[0]:.2f}-{rounds[-1]:.2f} "
              f"| {mem[c]/limit_m(c):.3f} | {mem[c]/mem[BASELINE.get(c, 'student')]:.3f} |")
        out['ratios'][c] = dict(time=statistics.median(rounds), time_middle_half=[q1, q3], time_range=[rounds[0], rounds[-1]],
                                memory=mem[c] / limit_m(c), memory_vs_student=mem[c] / mem[BASELINE.get(c, 'student')])
        if c.startswith('teacher-'): out['ratios'][c]['vs_float32_teacher'] = statistics.median(per_round(times, c, ['teacher']))
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if any(c.endswith('-fp16') for c in times) else [])
    rates = {d: matmul_rate(device, d) for d in dtypes}
    print(f"\nMatrix products on this {device_name(device)}: " + ', '.join(
          f"{str(d).replace('torch.', '')} {r:.3g} GFLOP/s" + (f" ({r / rates[torch.float32]:.2g}x)" if d != torch.float32 else '')
          for d, r in rates.items()) + '.')
    out['matmul_gflops'] = {str(d).replace('torch.', ''): r for d, r in rates.items()}
    out['half_precision'] = half_precision(device, times)
    print('\n' + '\n'.join(verdict_lines(out['half_precision'])))
    if not phases: return out
    out['phases_ms'] = {}
    print(f"\nWhere a training batch's time goes (ms, the median over batches and rounds; 'rest' is the data loading and "
          f"fastai's loop, from the epoch's time):\n")
    print(f"| configuration | {' | '.join(PhaseTimer.phases)} | rest | total |")
    print(f"|---|{'---|' * (len(PhaseTimer.phases) + 2)}")
    for c, rounds in phases.items():
        ms = [statistics.median(p[n] for p in rounds) * 1e3 for n in PhaseTimer.phases]
        print(f"| {c} | {' | '.join(f'{m:.1f}' for m in ms)} | {t[c] * 1e3 - sum(ms):.1f} | {t[c] * 1e3:.1f} |")
        out['phases_ms'][c] = dict(zip(PhaseTimer.phases, ms), rest=t[c] * 1e3 - sum(ms))
    return out

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default=None, help="cpu or cuda (default: cpu, then cuda too if available)")
    p.add_argument('--batches', type=int, default=8, help="training batches per epoch")
    p.add_argument('--threads', type=int, default=None, help="CPU threads for torch (default: torch's choice, one per core)")
    p.add_argument('--rounds', type=int, default=21, help="interleaved rounds; the median is reported")
    p.add_argument('--configs', default=None, help="comma-separated configurations to run, or 'precision' (does teacher_dtype "
                   "help here?) (default: all; student and teacher always run)")
    p.add_argument('--bs', type=int, default=32, help="batch size (default 32)")
    p.add_argument('--size', type=int, default=64, help="image size (default 64)")
    p.add_argument('--isa', default=None, choices=list(ISA_LIMITS), help="run as a CPU limited to this instruction set "
                   "(avx2: no AVX-512, no bfloat16 or float16 kernels), whatever this CPU has")
    p.add_argument('--out', default='bench/cost_results.json', help="results file (default bench/cost_results.json; '' for none)")
    a = p.parse_args()
    limit_isa(a.isa)
    steady_malloc()
    if a.threads: torch.set_num_threads(a.threads)
    devices = [a.device] if a.device else ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    only = a.configs.split(',') if a.configs else None
    for d in devices: configs(d, only)  # unknown names: an error now, not after the first device's run
    machine = machine_info(devices)
    print(machine_line(machine))
    start = time.perf_counter()
    results = [report(d, *bench(d, a.batches, a.rounds, only, a.bs, a.size), bs=a.bs, size=a.size) for d in devices]
    if a.out:
        meta = dict(provenance(start, machine), batches=a.batches, rounds=a.rounds, bs=a.bs, size=a.size)
        with open(a.out, 'w') as f: json.dump(dict(meta, results=results), f, indent=1)
        print(f"\nwritten to {a.out}")
