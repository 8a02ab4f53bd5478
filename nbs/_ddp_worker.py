"""One rank of the 2-process CPU/gloo test of `KnowledgeDistillationCallback` under `learn.distrib_ctx()`.

Spawned by `07_distributed.ipynb` with MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and LOCAL_RANK set, as
`accelerate launch` would. Usage: `python _ddp_worker.py OUT_DIR STUDENT_LAYER [TEACHER_DTYPE]` (TEACHER_DTYPE: e.g. bf16; default: the teacher's own). Writes `OUT_DIR/rank{RANK}.pt`.
The notebook imports `make_data`, `make_models`, `kd_loss`, `N_TRAIN`, `BS` from here for its single-process reference.

Each rank destroys the process group before it exits. Left alive (`distrib_ctx` does not destroy the group that Accelerate
creates), its gloo worker threads run on into interpreter shutdown: a worker delayed by a loaded CPU that drops the last
reference to a tensor of the last collective only then needs the GIL for it, the finalizing interpreter ends that thread
(pthread_exit) inside a C++ destructor, and the process aborts with "terminate called without an active exception".
"""
import os, sys, gc
import torch
# Before the process group exists: `torch.distributed.nn`'s functions take `group=group.WORLD` as a default argument,
# evaluated on import. Imported later (DDP imports torch._dynamo, which imports it), they would hold the group, and
# `destroy_process_group()` could not free it: its threads would still run at exit.
import torch.distributed.nn
from torch import nn

N_TRAIN, N_VALID, BS = 32, 8, 4   # per-rank batch size: 2 ranks x 4 = one reference batch of 8
LR = 0.1

def make_data(seed=0):
    "Synthetic 3x8x8 'images' and 4 classes"
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(N_TRAIN, 3, 8, 8, generator=g), torch.randint(0, 4, (N_TRAIN,), generator=g)
    return x, y

def make_models(seed=0):
    "A tiny student (no batch norm, so DDP == one big batch exactly) and a teacher with batch norm (catches train mode)"
    torch.manual_seed(seed)
    student = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():  # non-default running stats, so that eval and train mode give different outputs
        teacher[1].running_mean.uniform_(-0.5, 0.5); teacher[1].running_var.uniform_(0.5, 2.)
    return student, teacher

def kd_loss(**kw):
    "Logits and features at once: the student's feature hooks must work through DDP"
    from fasterai_distill.losses import SoftTarget, FitNet
    return SoftTarget(**kw) + FitNet(**kw)

def n_hooks(model): return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

def comm_threads():
    "Names of this process's gloo and TCPStore threads (read from /proc: Linux only; elsewhere `[]`, unchecked)"
    tasks = '/proc/self/task'
    if not os.path.isdir(tasks): return []
    names = []
    for t in os.listdir(tasks):
        try:
            with open(f'{tasks}/{t}/comm') as f: names.append(f.read().strip())
        except OSError: pass  # the thread ended meanwhile
    return sorted(n for n in names if 'gloo' in n or 'tcpstore' in n)

def main(student_layer, teacher_dtype=None):
    "Train one epoch under `distrib_ctx`; return what this rank saw and holds"
    from fastai.basics import Learner, Callback, DataLoaders, SGD
    from fastai.data.load import DataLoader
    from fastai.callback.progress import ProgressCallback
    from fastai.distributed import DistributedDL
    from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
    from fasterai_distill.layers import find_layers, unwrap_model

    # fastai's DistributedDL shares rank 0's sample order through a CUDA tensor (NCCL needs one); gloo takes CPU tensors.
    def _broadcast(self, t, rank):
        t = torch.tensor(t, dtype=torch.long)
        torch.distributed.broadcast(t, rank)
        return t.tolist()
    DistributedDL._broadcast = _broadcast

    x, y = make_data()
    train = list(zip(x, y))
    dls = DataLoaders(DataLoader(train, bs=BS, shuffle=False), DataLoader(train[:N_VALID], bs=BS), device='cpu')
    student, teacher = make_models()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    kd = KnowledgeDistillationCallback(teacher, kd_loss, student_layer, '0', weight=0.5, teacher_dtype=teacher_dtype)

    class Spy(Callback):
        "Records what each rank sees and holds, batch by batch"
        order = 60
        def before_fit(self): self.rec = dict(model_types=[], xb_sums=[], weights=[], names_same=[], hooks_between=[])
        def before_batch(self):
            if not self.training: return
            m = self.learn.model
            self.rec['model_types'].append(type(m).__name__)
            self.rec['xb_sums'].append(self.xb[0].sum().item())
            a, b = find_layers(m, ['0', 'module.0'])
            self.rec['names_same'].append(a is b is unwrap_model(m)[0])
        def after_step(self):
            self.rec['weights'].append(torch.cat([p.detach().flatten() for p in self.learn.model.parameters()]).clone())
        def after_batch(self):
            if self.training: self.rec['hooks_between'].append(n_hooks(self.learn.model))

    spy = Spy()
    learn = Learner(dls, student, loss_func=nn.CrossEntropyLoss(), opt_func=SGD, lr=LR, cbs=[kd, spy])
    learn.remove_cb(ProgressCallback)
    with learn.distrib_ctx(cpu=True):  # `cpu=True` goes to accelerate's `Accelerator`: gloo backend, no GPU
        learn.fit(1)

    return dict(**spy.rec,
        recorder=learn.recorder.values, metric_names=list(learn.recorder.metric_names),
        teacher_before=teacher_before, teacher_after=teacher.state_dict(),
        teacher_grads=[p.grad for p in teacher.parameters()],
        teacher_training=teacher.training, teacher_bn=type(teacher[1]).__name__,
        teacher_device=str(next(teacher.parameters()).device), teacher_dtypes={p.dtype for p in teacher.parameters()},
        teacher_is_kd_teacher=kd.teacher is teacher,
        model_after=type(learn.model).__name__,
        hooks_after=(n_hooks(learn.model), n_hooks(teacher)),
        world_size=torch.distributed.get_world_size(), rank=torch.distributed.get_rank(),
    )

def teardown():
    "Destroy the process group (fastai's `teardown_distrib`): its gloo threads and rank 0's TCPStore server are joined"
    from fastai.distributed import teardown_distrib
    gc.collect()  # a DDP wrapper left in a reference cycle would still hold the group
    teardown_distrib()

if __name__ == '__main__':
    out_dir = sys.argv[1]
    try: rec = main(*sys.argv[2:4])
    finally: teardown()
    rec['comm_threads_after_teardown'] = comm_threads()
    torch.save(rec, os.path.join(out_dir, f"rank{os.environ['RANK']}.pt"))
