#!/usr/bin/env bash
# The GPU side of the project in one run, for a machine with a CUDA GPU and no network, in under 8 minutes:
#   install    the wheels carried in .whl/ into /tmp/site, offline and without dependency resolution: fastai, fastcore,
#              nbdev and what they import that a CUDA image with Python 3.12, torch, torchvision, numpy, pandas,
#              matplotlib, scikit-learn and pytest lacks (no .whl/: they must import already);
#   cost       bench/cost.py --device cuda: time and peak memory of distillation with float32, float16 and bfloat16
#              teachers, as ratios of the float32 limit (student training + teacher inference) measured in the same run;
#   precision  bench/precision.py: images/s of distillation in fp32, fp16 and bf16 (ResNet-34 -> ResNet-18, 224x224);
#   nb:NAME    each notebook with `#| cuda` cells, those cells on (`nbdev-test --flags cuda`);
# then prints a short table. Each step has a time limit, all of them together 450 s (BUDGET_S), and a failed step does
# not stop the next ones. Results, in OUT (the argument, else $OUT, else bench/results/gpu): cost_cuda_results.json and
# precision_results.json (copy them to bench/: the "What it costs" page shows the first), steps.tsv, gpu.log (every
# step's output) and logs/<step>.log.
#
#   bench/gpu.sh --fetch-wheels   # here, with network: download the wheels into .whl/ (git-ignored, about 11 MB) at
#                                 # the versions of this environment, for CPython $GPU_PYTHON (default 3.12) on x86-64
#   bench/gpu.sh [OUT]            # on the GPU machine, from the repository root, with .whl/ in the working tree
#   bench/gpu.sh --dry-run        # anywhere (CI): the CPU side (syntax, the benchmark scripts on CPU at tiny sizes,
#                                 # the summary) in a temporary folder, and what the GPU run would run
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
GPU_PYTHON=${GPU_PYTHON:-3.12}
# What fastai (vision, callbacks, fastprogress's HTML output) and nbdev's test runner import, beyond the GPU image
WHEELS="fastai fastcore fastprogress fasttransform plum-dispatch beartype fastdownload
  nbdev execnb astunparse ghapi fastgit fastspec fasttransport watchdog build pyproject-hooks
  ipython ipython-pygments-lexers traitlets jedi parso matplotlib-inline prompt-toolkit wcwidth pexpect ptyprocess
  stack-data asttokens executing pure-eval
  python-fasthtml starlette uvicorn httpx2 httpcore2 oauthlib beautifulsoup4 soupsieve itsdangerous python-multipart truststore"

mode=run
case "${1:-}" in
  --fetch-wheels) mode=fetch ;;
  --dry-run) mode=dry ;;
  -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  -*) echo "bench/gpu.sh: unknown option $1 (--fetch-wheels, --dry-run, or an output folder)"; exit 2 ;;
esac

if [ $mode = fetch ]; then
  pins=$($PY -c "import importlib.metadata as md, sys; print(' '.join(f'{n}=={md.version(n)}' for n in sys.argv[1:]))" $WHEELS) || exit 1
  rm -rf .whl && mkdir .whl
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pins || exit 1
  echo "$(ls .whl/*.whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl/ (git-ignored): run bench/gpu.sh there with .whl carried"
  exit 0
fi

if [ $mode = dry ]; then OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
else OUT=${1:-${OUT:-bench/results/gpu}}; fi
mkdir -p "$OUT/logs"; OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu.log; : > "$LOG"; printf 'step\tstatus\tseconds\n' > "$OUT/steps.tsv"
T0=$SECONDS; DEADLINE=$((SECONDS + ${BUDGET_S:-450}))

step() {  # step NAME LIMIT_S CMD...: run CMD within LIMIT_S seconds, output to logs/NAME.log and gpu.log; note the status
  local name=$1 limit=$2; shift 2
  local t=$SECONDS f="$OUT/logs/${name//[^A-Za-z0-9_.-]/_}.log" status rc
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 15 ]; then printf '%s\tskipped (no time left)\t0\n' "$name" >> "$OUT/steps.tsv"; echo "  $name: skipped, no time left"; return 1; fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "+ $*"
  timeout -k 10 "$limit" "$@" > "$f" 2>&1; rc=$?
  case $rc in 0) status=ok ;; 124|137) status="timeout (${limit} s)" ;; *) status="failed ($rc)" ;; esac
  { echo "=== $name: $*"; cat "$f"; echo "=== $name: $status"; } >> "$LOG"
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t))" >> "$OUT/steps.tsv"
  [ $rc -eq 0 ] || { echo "  $name: $status; the end of logs/$(basename "$f"):"; tail -n 25 "$f" | sed 's/^/  | /'; }
  return $rc
}

# The notebooks with GPU-only cells (`#| cuda` as the first line of a cell)
cuda_nbs=$(grep -l '"#| cuda' nbs/*.ipynb nbs/*/*.ipynb 2>/dev/null)
[ -n "$cuda_nbs" ] || { echo "no notebook in nbs/ has a '#| cuda' cell"; exit 1; }

if [ $mode = dry ]; then
  echo "dry run: the CPU side of bench/gpu.sh, in $OUT"
  step syntax 30 bash -n "$0"
  step compile 60 $PY -m py_compile bench/common.py bench/cost.py bench/precision.py bench/students.py bench/quality.py
  step nbdev-test 10 bash -c 'command -v nbdev-test'
  step precision 120 $PY bench/precision.py --device cpu --size 32 --bs 2 --batches 2 --rounds 1 --precisions fp32 bf16 \
    --out "$OUT/precision_results.json"
  step cost 120 $PY bench/cost.py --device cpu --configs soft,soft-bf16 --size 32 --bs 2 --batches 2 --rounds 1 \
    --out "$OUT/cost_cuda_results.json"
  echo
  echo "On a GPU machine it would run (from the repository root, with .whl/ there):"
  echo "  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl"
  echo "  export PYTHONPATH=/tmp/site:\$PWD PATH=/tmp/site/bin:\$PATH"
  echo "  $PY bench/cost.py --device cuda --out OUT/cost_cuda_results.json"
  echo "  $PY bench/precision.py --out OUT/precision_results.json"
  for nb in $cuda_nbs; do echo "  OMP_NUM_THREADS=4 nbdev-test $nb --flags cuda --do-print --timing"; done
  if ls .whl/*.whl > /dev/null 2>&1; then
    missing=$(for n in $WHEELS; do ls .whl/ | grep -qi "^${n//-/_}-" || echo "$n"; done)
    echo "  .whl/: $(ls .whl/*.whl | wc -l) wheels, $(du -sh .whl | cut -f1)${missing:+; MISSING: $missing}"
  else echo "  .whl/ is not here: 'bench/gpu.sh --fetch-wheels' downloads it"; fi
else
  $PY -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' || {
    echo "bench/gpu.sh: torch sees no CUDA GPU here ('bench/gpu.sh --dry-run' checks the CPU side)"; exit 1; }
  if ls .whl/*.whl > /dev/null 2>&1; then
    step install 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
  else export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}; fi
  step imports 60 $PY -c 'import fastai.vision.all, nbdev, execnb, fasterai_distill.all; print("imports ok")'
  step cost 150 $PY bench/cost.py --device cuda --out "$OUT/cost_cuda_results.json"
  step precision 120 $PY bench/precision.py --out "$OUT/precision_results.json"
  for nb in $cuda_nbs; do
    step "nb:$(basename "$nb" .ipynb)" 180 env OMP_NUM_THREADS=4 nbdev-test "$nb" --flags cuda --do-print --timing
  done
fi

echo
$PY - "$OUT" "$((SECONDS - T0))" <<'EOF'
import csv, json, sys
from pathlib import Path
out, total = Path(sys.argv[1]), sys.argv[2]
steps = list(csv.DictReader(open(out/'steps.tsv'), delimiter='\t'))
print("| step | status | seconds |\n|---|---|---|")
for s in steps: print(f"| {s['step']} | {s['status']} | {s['seconds']} |")
print(f"total: {total} s; results and logs in {out}")
res = lambda n: json.loads((out/n).read_text()) if (out/n).exists() else None
if (p := res('precision_results.json')):
    print(f"\nbench/precision.py ({p['device']}, {p['bs']} x {p['size']}x{p['size']}): img/s and SoftTarget / ideal "
          "(ideal: student training and teacher inference back to back)")
    for prec, r in p['images_per_s'].items():
        q = p['ratios'][prec]
        print(f"  {prec}: student {r['student']:.0f}, teacher {r['teacher']:.0f}, SoftTarget {r['soft']:.0f} img/s; "
              f"SoftTarget / ideal {q['soft_vs_ideal']:.2f}, Attention / ideal {q['attention_vs_ideal']:.2f}")
if (c := res('cost_cuda_results.json')):
    r = c['results'][0]
    print(f"\nbench/cost.py ({r['device']}, {c['bs']} x {c['size']}x{c['size']}, {c['rounds']} rounds): "
          "time and peak memory / the float32 limit")
    for k, v in r['ratios'].items():
        vs = f", {v['vs_float32_teacher']:.2f}x the float32 teacher" if 'vs_float32_teacher' in v else ''
        print(f"  {k:22} time {v['time']:.2f}  memory {v['memory']:.2f}{vs}")
    for name, v in r['half_precision'].items():
        if name != 'auto': print(f"  teacher_dtype=torch.{name}: {v['verdict']} (SoftTarget {v['soft']:.2f} of the limit, "
                                 f"{v['soft_float32']:.2f} with the float32 teacher)")
    print(f"  teacher_dtype='auto' would pick {r['half_precision']['auto']}")
    try:
        from fasterai_distill.bench import machine_line
        print(f"\nmachine: {machine_line(c)}")
    except ImportError as e: print(f"\nmachine: {c['machine']} ({e})")
sys.exit(any(s['status'] != 'ok' for s in steps))
EOF
