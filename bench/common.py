"Pieces shared by the benchmark scripts in `bench/` (run them from the repository root: `python bench/<script>.py`)."
import os, sys, time
import torch
from fastai.callback.core import Callback

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

def steady_malloc():
    "Re-run this script once with glibc's malloc thresholds fixed (Linux only; a no-op if they are already set)"
    if not sys.platform.startswith('linux') or all(k in os.environ for k in _MALLOC_ENV): return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC_ENV})
