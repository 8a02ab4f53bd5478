#!/usr/bin/env python
"""Quality of every distillation loss on scikit-learn digits: test accuracy of the same student, trained the same way,
without and with each loss. Produces the table of the "Choosing a loss" guide (nbs/tutorials/losses_guide.ipynb).

    python bench/quality.py                 # the committed results: 3 seeds, writes bench/quality_results.json
    python bench/quality.py --seeds 5 --out /tmp/q.json
    python bench/quality.py --vit           # the vision-transformer table: writes bench/quality_vit_results.json

Setup (`fasterai_distill.demo`): the teacher (7-conv CNN, 293k parameters) is trained once on the whole training
split (1,077 images); the student (3-conv CNN, 24k parameters) is trained on `--n-train` labelled images (100) for
`--epochs` epochs of `fit_one_cycle` (40, lr 1e-2, batch size 16), from the same initialisation and data order for
every loss. Each seed changes the student's 100 images, initialisation and data order (`--data-seed N` fixes the
images); the teacher is the same in every run.

Hyper-parameters are chosen on the VALID split, never on the test split: every configuration of a small grid (one
grid per loss family, below) is trained with every seed, the one with the best mean valid accuracy is kept, and the
table reports the test accuracy of those same runs. Feature and relation losses are multiplied by a scale, because
their raw values differ by four orders of magnitude (0.0001 for PKT, 10 for ActivationBoundaries); the grid is
{0.1, 1, 10} x (task loss / distillation loss) measured on one batch before training, rounded to a power of 10.

SoftEntropy (the Distillation-Loss project's `soft_entropy`): alone, and with its second term on the student's head
(`fc`) applied to the teacher's `flatten` output through an adapter (`student_head=`, `teacher_head_input=`,
`adapters=True`). SoftTarget, DecoupledKD and Attention also run with the teacher at bfloat16 (`teacher_dtype`), on
the same grids. Last, SoftTarget at its chosen setting distills 3 students at once (`Students`: each seed's student and
two more initialisations) and the same 3 one by one: each student's accuracy, both ways.

Layers: Attention, FitNet, MMD pair the outputs of `block1` (32 ch, 8x8) and `block2` (64 ch, 4x4) of both models
(`match_feature_layers`); ActivationBoundaries the pre-ReLU BatchNorm outputs of those blocks (`block1.1`/`block2.1`
in the student, `block1.1.1`/`block2.1.1` in the teacher); the relation losses Similarity, PKT, RKD the penultimate
embeddings (`flatten`: 64-d student, 128-d teacher).

Vision transformers (`--vit`, the table of the "Distilling into a vision transformer" tutorial): the same teacher,
and a tiny ViT student from timm (`vit_tiny_patch16_224` with 8x8 images in 2x2 patches, a 4x4 grid of 48-d tokens,
4 blocks of 4 heads, MLP ratio 2: 77k parameters; `deit_tiny_distilled_patch16_224` the same with a distillation
token and head), trained on the whole training split (`--vit-n-train`, 1,077 images) for `--vit-epochs` (30) epochs
of `fit_one_cycle` at lr `--vit-lr` (3e-3), batches of 64, 3 seeds (initialisation and data order), every
distillation at weight 0.5 (DeiT's), no grid search: no distillation; SoftTarget (T=4, the CNN table's choice) on the
ViT's class head; the distillation token (`distill_token=True`) with SoftTarget and with HardTarget; and FitNet from
the teacher's `block2` (64 channels, 4x4) to the ViT's last block `blocks.3` (its tokens laid out on their 4x4 grid,
48 channels) through an adapter (`adapters=True`: a 1x1 convolution 48 -> 64 with BatchNorm).
"""
import argparse, itertools, json, math, time
from functools import partial
import torch
from fastai.callback.hook import hook_outputs
from fastprogress.fastprogress import progress_bar
from fasterai_distill.demo import digits_dls, digits_teacher, digits_student, train_digits, n_params
from fasterai_distill.all import *
from common import provenance

FEATURES = dict(student=['block1', 'block2'], teacher=['block1', 'block2'])
PRE_RELU = dict(student=['block1.1', 'block2.1'], teacher=['block1.1.1', 'block2.1.1'])
EMBEDDING = dict(student=['flatten'], teacher=['flatten'])
WEIGHTS = [0.5, 0.9]

# name -> (loss, layers, grid). Output losses: grid over the callback's weight (and T for SoftTarget).
# Feature / relation losses: weight 0.5 (task and distillation loss added with equal weight) and a grid of scales.
FAMILIES = {
    'SoftTarget':           (SoftTarget, None, dict(T=[2, 4, 8], weight=WEIGHTS)),
    'Logits':               (Logits, None, dict(weight=WEIGHTS)),
    'Mutual':               (Mutual, None, dict(weight=WEIGHTS)),
    'DecoupledKD':          (DecoupledKD, None, dict(beta=[1, 8], weight=WEIGHTS)),
    'DecoupledKD (NKD)':    (partial(DecoupledKD, normalize=True), None, dict(beta=[1, 8], weight=WEIGHTS)),
    'Attention':            (Attention, FEATURES, 'scale'),
    'FitNet':               (FitNet, FEATURES, 'scale'),
    'ActivationBoundaries': (ActivationBoundaries, PRE_RELU, 'scale'),
    'MMD':                  (MMD, FEATURES, 'scale'),
    'Similarity':           (Similarity, EMBEDDING, 'scale'),
    'PKT':                  (PKT, EMBEDDING, 'scale'),
    'RKD':                  (RKD, EMBEDDING, 'scale'),
    # The Distillation-Loss project's soft cross-entropy, alone and with the student's head on the teacher's features
    'SoftEntropy':          (SoftEntropy, None, dict(T=[2, 4, 8], weight=WEIGHTS)),
    'SoftEntropy + head on teacher features': (partial(SoftEntropy, lambda2=1.), None, dict(T=[2, 4, 8], weight=WEIGHTS),
                             dict(student_head='fc', teacher_head_input='flatten', adapters=True)),
    # The teacher at bfloat16 (`teacher_dtype`), on the same grids as with the float32 teacher
    'SoftTarget, bf16 teacher':  (SoftTarget, None, dict(T=[2, 4, 8], weight=WEIGHTS), dict(teacher_dtype=torch.bfloat16)),
    'DecoupledKD, bf16 teacher': (DecoupledKD, None, dict(beta=[1, 8], weight=WEIGHTS), dict(teacher_dtype=torch.bfloat16)),
    'Attention, bf16 teacher':   (Attention, FEATURES, 'scale', dict(teacher_dtype=torch.bfloat16)),
}
N_STUDENTS = 3  # `Students`: this many students at once (each seed's student and two more inits) vs one by one

def grid(d): return [dict(zip(d, v)) for v in itertools.product(*d.values())]

def loss_scale_grid(loss, layers, teacher, dls):
    "{0.1, 1, 10} x task loss / distillation loss on one batch with a fresh student, rounded to powers of 10"
    student = digits_student(seed=0).train()
    xb, yb = dls.one_batch()
    with hook_outputs([student.get_submodule(n) for n in layers['student']], detach=False) as hs: pred = student(xb)
    with torch.no_grad(), hook_outputs([teacher.get_submodule(n) for n in layers['teacher']]) as ht: teacher.eval()(xb)
    kd = loss(pred=pred, teacher_pred=None, fm_s=dict(zip(layers['student'], hs.stored)),
              fm_t=dict(zip(layers['teacher'], ht.stored)), target=yb).item()
    task = torch.nn.functional.cross_entropy(pred, yb).item()
    base = 10 ** round(math.log10(task / kd))
    return [dict(weight=0.5, scale=base * f) for f in (0.1, 1, 10)]

def make_loss(loss, cfg):
    cfg = dict(cfg)
    cfg.pop('weight')
    scale = cfg.pop('scale', None)
    loss = partial(loss, **cfg) if cfg else loss
    return CombinedLoss({loss: scale}) if scale is not None else loss

def describe(cfg): return ', '.join(f'{k}={v:g}' for k, v in cfg.items())

def run(dls_by_seed, teacher, loss, weight, layers, args, cb_kwargs=None, students=None):
    "Train the student with every seed (`loss=None`: without distillation); its valid and test accuracies"
    valid, test = [], []
    for seed, dls in dls_by_seed.items():
        layers_ = layers or {}
        cbs = None if loss is None else KnowledgeDistillationCallback(
            teacher, loss, layers_.get('student'), layers_.get('teacher'), weight=weight, **(cb_kwargs or {}))
        model = digits_student(seed=seed) if students is None else students(seed)
        learn = train_digits(model, dls, args.epochs, args.lr, cbs, seed)
        with learn.no_bar(), learn.no_logging():
            valid.append(float(learn.validate(ds_idx=1)[1])); test.append(float(learn.validate(ds_idx=2)[1]))
    return dict(valid=valid, test=test)

def student_inits(seed): return [digits_student(seed=seed + 1000 * k) for k in range(N_STUDENTS)]

def run_students(dls_by_seed, teacher, loss, weight, args):
    "Each of `N_STUDENTS` students' valid and test accuracies: distilled at once (`Students`), and one by one"
    at_once, alone = [dict(valid=[], test=[]) for _ in range(N_STUDENTS)], [dict(valid=[], test=[]) for _ in range(N_STUDENTS)]
    for seed, dls in dls_by_seed.items():
        learn = train_digits(Students(*student_inits(seed)), dls, args.epochs, args.lr, KnowledgeDistillationCallback(teacher, loss, weight=weight), seed)
        with learn.no_bar(), learn.no_logging():
            v, t = learn.validate(ds_idx=1), learn.validate(ds_idx=2)  # per student: loss_s{k}, accuracy_s{k}
        for k in range(N_STUDENTS):
            at_once[k]['valid'].append(float(v[2 + 2 * k])); at_once[k]['test'].append(float(t[2 + 2 * k]))
            r = run({seed: dls}, teacher, loss, weight, None, args, students=lambda s, k=k: student_inits(s)[k])
            alone[k]['valid'] += r['valid']; alone[k]['test'] += r['test']
    return at_once, alone

VIT = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=48, depth=4, num_heads=4, mlp_ratio=2)
# row -> (with a distillation token, loss, (student layers, teacher layers), more callback arguments)
VIT_ROWS = {
    'No distillation (ViT)':                     (False, None, None, {}),
    'SoftTarget on the class head (ViT)':        (False, partial(SoftTarget, T=4), None, {}),
    'Distillation token, SoftTarget (DeiT)':     (True, partial(SoftTarget, T=4), None, {}),
    'Distillation token, HardTarget (DeiT)':     (True, HardTarget, None, {}),
    'FitNet, block2 -> blocks.3 + adapter (ViT)': (False, FitNet, (['blocks.3'], ['block2']), dict(adapters=True)),
}

def vit_student(seed, token=False):
    "The tiny timm ViT of the ViT table (with `token`: the DeiT with a distillation token and head)"
    import timm
    torch.manual_seed(seed)
    return timm.create_model('deit_tiny_distilled_patch16_224' if token else 'vit_tiny_patch16_224', pretrained=False, **VIT)

def run_vit(teacher, args):
    "Each row of the ViT table: valid and test accuracies over the seeds"
    res = {}
    pbar = progress_bar(list(VIT_ROWS.items()))
    for name, (token, loss, layers, kwargs) in pbar:
        pbar.comment = name
        valid, test = [], []
        for seed in range(args.seeds):
            dls = digits_dls(args.vit_n_train, bs=args.vit_bs, seed=seed)
            cb = None if loss is None else KnowledgeDistillationCallback(teacher, loss, *(layers or (None, None)), weight=0.5,
                                                                        distill_token=token, **kwargs)
            learn = train_digits(vit_student(seed, token), dls, args.vit_epochs, args.vit_lr, cb, seed)
            with learn.no_bar(), learn.no_logging():
                valid.append(float(learn.validate(ds_idx=1)[1])); test.append(float(learn.validate(ds_idx=2)[1]))
        res[name] = dict(valid=valid, test=test)
    return res

def mean_std(xs):
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--seeds', type=int, default=3, help='number of seeds (default 3)')
    p.add_argument('--n-train', type=int, default=100, help="student's labelled training images (default 100)")
    p.add_argument('--data-seed', type=int, default=None, help="seed choosing the student's labelled images (default: the run's seed)")
    p.add_argument('--epochs', type=int, default=40, help='student epochs (default 40)')
    p.add_argument('--teacher-epochs', type=int, default=15, help='teacher epochs (default 15)')
    p.add_argument('--lr', type=float, default=1e-2, help='max learning rate (default 1e-2)')
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: these tiny models are fastest on one)')
    p.add_argument('--out', default=None, help='results file (default bench/quality_results.json; with --vit bench/quality_vit_results.json)')
    p.add_argument('--vit', action='store_true', help='only the vision-transformer table (needs timm)')
    p.add_argument('--vit-n-train', type=int, default=None, help="ViT table: labelled training images (default: the whole training split)")
    p.add_argument('--vit-epochs', type=int, default=30, help='ViT table: epochs (default 30)')
    p.add_argument('--vit-lr', type=float, default=3e-3, help='ViT table: max learning rate (default 3e-3)')
    p.add_argument('--vit-bs', type=int, default=64, help='ViT table: batch size (default 64)')
    args = p.parse_args(argv)
    if args.out is None: args.out = 'bench/quality_vit_results.json' if args.vit else 'bench/quality_results.json'
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    teacher_learn = train_digits(digits_teacher(seed=0), digits_dls(bs=64, seed=0), args.teacher_epochs, args.lr, seed=0)
    teacher = teacher_learn.model.eval()
    with teacher_learn.no_bar(), teacher_learn.no_logging():
        teacher_acc = dict(valid=float(teacher_learn.validate(ds_idx=1)[1]), test=float(teacher_learn.validate(ds_idx=2)[1]))
    if args.vit: return main_vit(teacher, teacher_acc, args, argv, start)
    # By default each seed draws its own labelled subset: the spread covers the choice of images, not only the initialisation
    dls_by_seed = {s: digits_dls(args.n_train, seed=s if args.data_seed is None else args.data_seed) for s in range(args.seeds)}

    jobs = [('No distillation (baseline)', None, None, None)]
    for name, (loss, layers, g, *cb_kwargs) in FAMILIES.items():
        cfgs = loss_scale_grid(loss, layers, teacher, dls_by_seed[0]) if g == 'scale' else grid(g)
        jobs += [(name, loss, layers, cfg, *cb_kwargs) for cfg in cfgs]
    results = {}
    def record(name, cfg, r):
        entry = results.setdefault(name, dict(tried=[]))
        entry['tried'].append(dict(setting=describe(cfg) if cfg else '', **r))
        best = max(entry['tried'], key=lambda t: mean_std(t['valid'])[0])  # chosen on the valid split only
        if best is entry['tried'][-1]: entry.update(chosen=cfg, chosen_desc=best['setting'], valid=r['valid'], test=r['test'])

    pbar = progress_bar(jobs + [None, 'students'])  # the last steps: the combined loss and `Students`, from the chosen settings
    for job in pbar:
        if job == 'students':  # SoftTarget at its chosen setting, several students at once vs one by one
            st = results['SoftTarget']['chosen']
            pbar.comment = f'SoftTarget, {N_STUDENTS} students at once and one by one'
            at_once, alone = run_students(dls_by_seed, teacher, partial(SoftTarget, T=st['T']), st['weight'], args)
            for k in range(N_STUDENTS):
                record(f'SoftTarget, {N_STUDENTS} students at once: student {k}', st, at_once[k])
                record(f'SoftTarget, one by one: student {k}', st, alone[k])
            continue
        if job is None:  # SoftTarget + Attention, each with its own chosen setting, at SoftTarget's weight
            st, at = results['SoftTarget']['chosen'], results['Attention']['chosen']
            cfg = dict(T=st['T'], scale=at['scale'], weight=st['weight'])
            pbar.comment = f'SoftTarget + Attention {describe(cfg)}'
            loss = CombinedLoss({partial(SoftTarget, T=st['T']): 1., Attention: at['scale']})
            record('SoftTarget + Attention', cfg, run(dls_by_seed, teacher, loss, cfg['weight'], FEATURES, args))
            continue
        name, loss, layers, cfg, *cb_kwargs = job
        pbar.comment = f'{name} {describe(cfg) if cfg else ""}'
        kd_loss = None if loss is None else make_loss(loss, cfg)
        record(name, cfg, run(dls_by_seed, teacher, kd_loss, cfg['weight'] if cfg else None, layers, args, *cb_kwargs))

    base_test = mean_std(results['No distillation (baseline)']['test'])
    rows = []
    for name, e in results.items():
        (tm, ts), (vm, vs) = mean_std(e['test']), mean_std(e['valid'])
        rows.append(dict(loss=name, setting=e['chosen_desc'], test_mean=tm, test_std=ts, valid_mean=vm, valid_std=vs,
                         delta=tm - base_test[0], test=e['test'], valid=e['valid'], tried=e['tried']))
    lines = [f"| loss | setting (chosen on valid) | test accuracy (%) | vs baseline | valid accuracy (%) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['setting']} | {100*r['test_mean']:.1f} ± {100*r['test_std']:.1f} | "
                     f"{100*r['delta']:+.1f} | {100*r['valid_mean']:.1f} ± {100*r['valid_std']:.1f} |")
    table = '\n'.join(lines)
    out = dict(**provenance(start, argv=argv), seeds=args.seeds, n_train=args.n_train, data_seed=args.data_seed, epochs=args.epochs,
               teacher_epochs=args.teacher_epochs, lr=args.lr, teacher_params=n_params(teacher),
               student_params=n_params(digits_student()), teacher_accuracy=teacher_acc,
               layers=dict(features=FEATURES, pre_relu=PRE_RELU, embedding=EMBEDDING), rows=rows, table=table)
    with open(args.out, 'w') as f: json.dump(out, f, indent=1)
    print(f"\nTeacher: test {100*teacher_acc['test']:.1f} %, valid {100*teacher_acc['valid']:.1f} %. "
          f"Student: {args.n_train} images, {args.seeds} seeds. {out['runtime_s']} s.\n")
    print(table)
    print(f"\nWritten to {args.out}")

def main_vit(teacher, teacher_acc, args, argv, start):
    "The vision-transformer table: run it, print it, write it to `args.out`"
    results = run_vit(teacher, args)
    base = mean_std(results['No distillation (ViT)']['test'])[0]
    rows = []
    for name, r in results.items():
        (tm, ts), (vm, vs) = mean_std(r['test']), mean_std(r['valid'])
        rows.append(dict(row=name, test_mean=tm, test_std=ts, valid_mean=vm, valid_std=vs, delta=tm - base, **r))
    lines = ["| student, distillation | test accuracy (%) | vs no distillation | valid accuracy (%) | test accuracy per seed (%) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {100*r['test_mean']:.1f} ± {100*r['test_std']:.1f} | {100*r['delta']:+.1f} | "
                     f"{100*r['valid_mean']:.1f} ± {100*r['valid_std']:.1f} | {', '.join(f'{100*x:.1f}' for x in r['test'])} |")
    table = '\n'.join(lines)
    import timm
    out = dict(**provenance(start, argv=argv), timm=timm.__version__, seeds=args.seeds, n_train=args.vit_n_train or len(digits_dls().train.dataset),
               epochs=args.vit_epochs, lr=args.vit_lr, bs=args.vit_bs, weight=0.5, teacher_epochs=args.teacher_epochs,
               teacher_params=n_params(teacher), student_params=n_params(vit_student(0)), deit_params=n_params(vit_student(0, True)),
               vit=VIT, teacher_accuracy=teacher_acc, rows=rows, table=table)
    with open(args.out, 'w') as f: json.dump(out, f, indent=1)
    print(f"\nTeacher: test {100*teacher_acc['test']:.1f} %. ViT student: {out['n_train']} images, {args.seeds} seeds. {out['runtime_s']} s.\n")
    print(table)
    print(f"\nWritten to {args.out}")

if __name__ == '__main__': main()
