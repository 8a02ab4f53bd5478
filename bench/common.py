"Pieces shared by the benchmark scripts in `bench/` (run them from the repository root: `python bench/<script>.py`)."
import datetime, os, statistics, sys, time
from pathlib import Path
import torch
from fastai.callback.core import Callback
# What a run records about its machine, and one rendering of it: shared with the docs pages, which print it beside figures
from fasterai_distill.bench import machine_info, machine_line, ISA_LIMITS  # noqa: F401 (the scripts import them from here)

def provenance(start:float, # `time.perf_counter()` when the run began
               machine:dict=None, # `machine_info()` of the run, if taken already
               device='cpu', # Otherwise: the device(s) whose machine to record
               argv:list=None, # The script's arguments (default: `sys.argv[1:]`)
              )->dict:
    "What every results file of `bench/` opens with: the command that wrote it, the date, the versions, the machine, the run time"
    m = machine or machine_info(device)
    args = sys.argv[1:] if argv is None else argv
    return dict(command=' '.join(['python', f'bench/{Path(sys.argv[0]).name}', *args]), date=datetime.date.today().isoformat(),
                torch=m['torch'], fastai=m['fastai'], python=m['python'], machine=m, runtime_s=round(time.perf_counter() - start, 1))

def sync(device):
    "Wait for the device's queued work, so wall-clock times cover it (no-op on CPU)"
    if torch.device(device).type == 'cuda': torch.cuda.synchronize()

class TrainTimer(Callback):
    "Times the training phase of a fit (not validation); `elapsed` holds the seconds of the last epoch"
    order = 100
    def before_train(self): sync(self.dls.device); self.t0 = time.perf_counter()
    def after_train(self): sync(self.dls.device); self.elapsed = time.perf_counter() - self.t0

def device_name(device):
    "The GPU's name, or the CPU with its thread count"
    return torch.cuda.get_device_name(device) if torch.device(device).type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'

# glibc's malloc returns large freed blocks to the OS and adapts its thresholds as it goes, so the big conv buffers
# of every CPU batch are page-faulted in anew a varying number of times: millions of page faults per run, and timings
# that move by 10-20% from round to round. Fixed thresholds keep freed memory for reuse (about 6x fewer page
# faults in `/usr/bin/time -v`), the same for every configuration of a run.
_MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': str(32 * 2**20), 'MALLOC_TRIM_THRESHOLD_': str(4 * 2**30)}

def _rerun_with(env:dict):
    "Re-run this script in place with `env` added to the environment, unless it is there already"
    if all(os.environ.get(k) == v for k, v in env.items()): return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})

def steady_malloc():
    "Re-run this script once with glibc's malloc thresholds fixed (Linux only; a no-op if they are already set)"
    if not sys.platform.startswith('linux') or all(k in os.environ for k in _MALLOC_ENV): return
    _rerun_with(_MALLOC_ENV)

def limit_isa(isa:str|None):
    "Re-run this script once as a CPU limited to `isa` (a key of `ISA_LIMITS`; None: no-op)"
    if isa: _rerun_with(ISA_LIMITS[isa])


class PhaseTimer(Callback):
    "Per training batch: seconds of the student's forward, of the rest until the loss (the teachers), of the backward and of the step"
    # CPU only: on a GPU these marks would need a device sync each, which would change the timings they measure.
    # The student's forward is bounded by hooks on the model; 'teacher' is the rest from `before_batch` to `after_loss`,
    # wherever the teachers run in it. Order 0 runs before the distillation callback, whose loss counts in 'backward'.
    order, run_valid = 0, False
    phases = ('forward', 'teacher', 'backward', 'step')
    def before_train(self):
        self.rec, m = [], self.learn.model
        self.handles = [m.register_forward_pre_hook(self._mark('f0')), m.register_forward_hook(self._mark('f1'))]
    def _mark(self, key):
        def hook(*_): self.t[key] = time.perf_counter()
        return hook
    def after_train(self):
        for h in self.handles: h.remove()
    def before_batch(self): self.t = {'b': time.perf_counter()}
    def after_loss(self): self.t['l'] = time.perf_counter()
    def after_backward(self): self.t['bw'] = time.perf_counter()
    def after_step(self):
        t = self.t; t['s'] = time.perf_counter()
        fwd = t['f1'] - t['f0']
        self.rec.append((fwd, t['l'] - t['b'] - fwd, t['bw'] - t['l'], t['s'] - t['bw']))

    def medians(self)->dict:
        "The median seconds of each phase over this epoch's batches, the first one left out (it sets up the optimizer state)"
        return {n: statistics.median(r[i] for r in self.rec[1:]) for i, n in enumerate(self.phases)}
