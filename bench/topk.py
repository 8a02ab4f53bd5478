#!/usr/bin/env python
"""Top-k logits in a teacher store (`cache_topk`): bytes per item, and the student's accuracy with SoftTarget and
DecoupledKD when only the k largest logits of each item are kept, k in {1, 5, 20, all}, against no distillation.

Data: scikit-learn's `make_classification`, 100 classes, 40 features. The teacher (MLP 40-512-512-100) is trained once
on `--n-teacher` items; each student (MLP 40-64-100) is trained on `--n-student` other items, with their labels and the
teacher's outputs, and tested on `--n-test` held-out items. Each k has one store, filled once by `fill_teacher_store`
and read by every fit that uses it (the teacher never runs during the students' training). Each seed changes the
student's initialisation and data order; the data, the teacher and the stores are the same for every seed.

    python bench/topk.py                   # the committed results: 3 seeds, writes bench/topk_results.json
    python bench/topk.py --seeds 1 --epochs 2 --out /tmp/topk.json      # a quick check of the script
"""
import argparse, json, random, shutil, statistics, tempfile, time
from pathlib import Path
import numpy as np
import torch
from torch import nn
from sklearn.datasets import make_classification
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.metrics import accuracy
from fasterai_distill.losses import SoftTarget, DecoupledKD
from fasterai_distill.distillation_callback import KnowledgeDistillationCallback
from fasterai_distill.callback.store import fill_teacher_store
from common import provenance

N_CLASSES, KS = 100, [1, 5, 20, None]

LOSSES = {'SoftTarget': SoftTarget, 'DecoupledKD': DecoupledKD}

def make_data(a):
    "Standardised features and labels, split into the teacher's, the students' and the test items"
    n = a.n_teacher + a.n_student + a.n_test
    x, y = make_classification(n_samples=n, n_features=40, n_informative=30, n_redundant=0, n_classes=N_CLASSES,
                               n_clusters_per_class=2, class_sep=2.0, random_state=0)
    x, y = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32), torch.tensor(y)
    cut = np.cumsum([a.n_teacher, a.n_student])
    return [list(zip(x[s], y[s])) for s in (slice(0, cut[0]), slice(cut[0], cut[1]), slice(cut[1], n))]

def mlp(*widths):
    layers = [l for a, b in zip(widths[:-2], widths[1:-1]) for l in (nn.Linear(a, b), nn.ReLU())]
    return nn.Sequential(*layers, nn.Linear(widths[-2], widths[-1]))

def dls(train, test, bs, seed):
    random.seed(seed); torch.manual_seed(seed)  # fastai's DataLoader draws its shuffling seed from `random`
    return DataLoaders(DataLoader(train, bs=bs, shuffle=True, drop_last=True), DataLoader(test, bs=1024), device='cpu')

def fit(data, model, epochs, lr, cbs=None):
    "Test accuracy after `fit_one_cycle`"
    learn = Learner(data, model, loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=cbs)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, lr)
        return learn.validate()[1]

def main(a, tmp):
    t_items, s_items, test = make_data(a)
    torch.manual_seed(0)
    teacher = mlp(40, 512, 512, N_CLASSES)
    teacher_acc = fit(dls(t_items, test, 256, 0), teacher, a.teacher_epochs, 3e-3)
    stores, sizes = {}, {}
    for k in KS:  # one store per k, filled once; the students' data in the same DataLoader as their fits use
        stores[k] = tmp/f'top{k or "all"}'
        fill_teacher_store(dls(s_items, test, a.bs, 0).train, teacher, stores[k], topk=k, progress=False)
        sizes[str(k or 'all')] = sum(np.load(f, mmap_mode='r')[0].nbytes for f in stores[k].glob('t0.*'))
    with torch.no_grad(): probs = teacher.eval()(torch.stack([x for x, _ in s_items])).softmax(1).sort(1, descending=True).values
    mass = {str(k or 'all'): probs[:, :k].sum(1).mean().item() for k in KS}  # the probability the kept logits hold, on average
    forwards = []
    teacher.register_forward_hook(lambda *_: forwards.append(1))  # none expected: every fit reads a full store
    acc = {'none': []}
    for seed in range(a.seeds):
        torch.manual_seed(seed); acc['none'].append(fit(dls(s_items, test, a.bs, seed), mlp(40, 64, N_CLASSES), a.epochs, a.lr))
        for name, loss in LOSSES.items():
            for k in KS:
                kd = KnowledgeDistillationCallback(teacher, loss, weight=a.weight, cache_teacher=stores[k], cache_topk=k)
                torch.manual_seed(seed)
                acc.setdefault(f'{name} k={k or "all"}', []).append(fit(dls(s_items, test, a.bs, seed), mlp(40, 64, N_CLASSES), a.epochs, a.lr, kd))
        print(f"seed {seed}: " + ', '.join(f"{n} {v[-1]:.3f}" for n, v in acc.items()), flush=True)
    stats = {n: dict(mean=statistics.mean(v), std=statistics.stdev(v) if len(v) > 1 else 0., runs=v) for n, v in acc.items()}
    return dict(teacher_accuracy=teacher_acc, logits_bytes_per_item=sizes, teacher_topk_mass=mass, teacher_forwards_in_students_fits=len(forwards), accuracy=stats)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seeds', type=int, default=3); p.add_argument('--epochs', type=int, default=15)
    p.add_argument('--teacher-epochs', type=int, default=15); p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--bs', type=int, default=64); p.add_argument('--weight', type=float, default=0.9)
    p.add_argument('--n-teacher', type=int, default=16000); p.add_argument('--n-student', type=int, default=2000)
    p.add_argument('--n-test', type=int, default=4000)
    p.add_argument('--out', default=str(Path(__file__).parent/'topk_results.json'))
    a = p.parse_args()
    t0, tmp = time.perf_counter(), Path(tempfile.mkdtemp())
    try: res = main(a, tmp)
    finally: shutil.rmtree(tmp)
    out = dict(provenance(t0), settings={k: v for k, v in vars(a).items() if k != 'out'}, n_classes=N_CLASSES, **res)
    Path(a.out).write_text(json.dumps(out, indent=1) + '\n')
    print(f"teacher {res['teacher_accuracy']:.3f}; logits bytes per item: {res['logits_bytes_per_item']}; "
          f"probability held by the top k: {({k: round(v, 3) for k, v in res['teacher_topk_mass'].items()})}")
    for n, s in res['accuracy'].items(): print(f"  {n:>18}: {s['mean']:.3f} ± {s['std']:.3f}")
    print(f"wrote {a.out}")
