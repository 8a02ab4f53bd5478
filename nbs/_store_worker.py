"""Processes for the tests of `03e_callback.store.ipynb`: fits that share one teacher store on disk.

    python _store_worker.py ddp OUT_DIR STORE     # one DDP rank on CPU (gloo; RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set):
                                                  # one epoch with cache_teacher=STORE; writes OUT_DIR/rank{RANK}.pt
    python _store_worker.py kill STORE N          # one process, one epoch with cache_teacher=STORE, killed (SIGKILL) while
                                                  # it commits its N-th batch: after the rows, before the flags saying they are there

The notebook imports this module: `launch_ranks` starts the DDP ranks, and `make_data`, `make_teacher`, `fit`, `N_TRAIN`,
`BS` check what the processes did.
"""
import os, shutil, signal, socket, subprocess, sys, tempfile
import torch
from torch import nn

N_TRAIN, BS = 32, 4  # per process batch size

def make_data(seed=0):
    "Synthetic 3x8x8 'images' and 4 classes"
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N_TRAIN, 3, 8, 8, generator=g), torch.randint(0, 4, (N_TRAIN,), generator=g)

def make_teacher(seed=0):
    "A small CNN with batch norm (non-default running statistics, so that eval and train mode differ)"
    torch.manual_seed(seed)
    t = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad(): t[1].running_mean.uniform_(-0.5, 0.5); t[1].running_var.uniform_(0.5, 2.)
    return t

def make_student(seed=1):
    "No batch norm: `distrib_ctx` would make it a SyncBatchNorm, which needs GPUs"
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

def kd_loss(**kw):
    "Logits and features: both go to the store"
    from fasterai_distill.losses import SoftTarget, FitNet
    return SoftTarget(**kw) + FitNet(**kw)

def fit(store, ddp=False):
    "One epoch distilling `make_teacher()` with cache_teacher=`store`; the teacher's forwards and what the loss got, per batch"
    from fastai.basics import Learner, Callback, DataLoaders
    from fastai.data.load import DataLoader
    from fastai.callback.progress import ProgressCallback
    from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
    x, y = make_data()
    train = list(zip(x, y))
    dls = DataLoaders(DataLoader(train, bs=BS, shuffle=ddp), DataLoader(train[:8], bs=BS), device='cpu')  # in order in one process
    teacher, forwards = make_teacher(), []
    teacher.register_forward_hook(lambda *_: forwards.append(1))
    kd = KnowledgeDistillationCallback(teacher, kd_loss, '0', '0', cache_teacher=store)
    class Record(Callback):
        order = kd.order + 0.1  # after the callback's `after_pred`
        def before_fit(self): self.rec = []
        def after_pred(self):
            if self.training: self.rec.append((self.xb[0], kd.teacher_pred, kd.fm_t['0']))
    rec = Record()
    learn = Learner(dls, make_student(), loss_func=nn.CrossEntropyLoss(), lr=0.1, cbs=[kd, rec])
    learn.remove_cb(ProgressCallback)
    if ddp:
        with learn.distrib_ctx(cpu=True): learn.fit(1)  # `cpu=True` goes to accelerate: gloo backend, no GPU
    else: learn.fit(1)
    return dict(forwards=len(forwards), rec=rec.rec)

def ddp(out_dir, store):
    from fastai.distributed import DistributedDL
    def _broadcast(self, t, rank):  # fastai's sends a CUDA tensor (NCCL needs one); gloo takes CPU tensors
        t = torch.tensor(t, dtype=torch.long)
        torch.distributed.broadcast(t, rank)
        return t.tolist()
    DistributedDL._broadcast = _broadcast
    torch.save(fit(store, ddp=True), os.path.join(out_dir, f"rank{os.environ['RANK']}.pt"))

def kill(store, n):
    "Die like a killed process (no cleanup, no `finally`) inside the `n`-th commit, once the rows are flushed, before their flags"
    from fasterai_distill.callback.store import TeacherStore
    TeacherStore.commit_every = 0  # a commit at every batch
    class DieOnFlags:
        def __init__(self, a): self.a = a
        def __getitem__(self, i): return self.a[i]
        def __setitem__(self, i, v):
            global n_writes
            n_writes += 1
            if n_writes == int(n): os.kill(os.getpid(), signal.SIGKILL)
            self.a[i] = v
    _open = TeacherStore._open
    def open_then_watch(self): _open(self); self.filled = DieOnFlags(self.filled)
    TeacherStore._open = open_then_watch
    fit(store)

def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def launch_ranks(store, env, nproc=2, timeout=600):
    "Run `ddp` on `nproc` CPU ranks with the environment `env`, as `accelerate launch` would; return each rank's record"
    out, worker = tempfile.mkdtemp(), os.path.abspath(__file__)
    try:
        env = {**env, 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(_free_port()), 'WORLD_SIZE': str(nproc)}
        procs = [subprocess.Popen([sys.executable, worker, 'ddp', out, str(store)], cwd=os.path.dirname(worker),
                                  env={**env, 'RANK': str(r), 'LOCAL_RANK': str(r)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for r in range(nproc)]
        try: logs = [p.communicate(timeout=timeout)[0] for p in procs]
        finally:
            for p in procs: p.kill()
        for r, (p, log) in enumerate(zip(procs, logs)):
            if p.returncode: raise RuntimeError(f"rank {r} failed:\n{log[-3000:]}")
        return [torch.load(f'{out}/rank{r}.pt', weights_only=False) for r in range(nproc)]
    finally: shutil.rmtree(out)

n_writes = 0
if __name__ == '__main__':
    {'ddp': ddp, 'kill': kill}[sys.argv[1]](*sys.argv[2:])
