"""One rank of the 2-process CPU/gloo test of `KnowledgeDistillationCallback` under `learn.distrib_ctx()`.

Spawned by `07_distributed.ipynb` with MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and LOCAL_RANK set, as
`accelerate launch` would. Usage: `python _ddp_worker.py OUT_DIR STUDENT_LAYER [TEACHER_DTYPE]` (TEACHER_DTYPE: e.g. bf16; default: the teacher's own). Writes `OUT_DIR/rank{RANK}.pt`.
The notebook imports `make_data`, `make_models`, `kd_loss`, `N_TRAIN`, `BS` from here for its single-process reference.
"""
import os, sys
import torch
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

def main(out_dir, student_layer, teacher_dtype=None):
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

    torch.save(dict(**spy.rec,
        recorder=learn.recorder.values, metric_names=list(learn.recorder.metric_names),
        teacher_before=teacher_before, teacher_after=teacher.state_dict(),
        teacher_grads=[p.grad for p in teacher.parameters()],
        teacher_training=teacher.training, teacher_bn=type(teacher[1]).__name__,
        teacher_device=str(next(teacher.parameters()).device), teacher_dtypes={p.dtype for p in teacher.parameters()},
        teacher_is_kd_teacher=kd.teacher is teacher,
        model_after=type(learn.model).__name__,
        hooks_after=(n_hooks(learn.model), n_hooks(teacher)),
        world_size=torch.distributed.get_world_size(), rank=torch.distributed.get_rank(),
    ), os.path.join(out_dir, f"rank{os.environ['RANK']}.pt"))

if __name__ == '__main__': main(*sys.argv[1:4])
