#!/usr/bin/env bash
# One check of cnnlab on a CUDA machine, in under 8 minutes on one GPU, offline once .venv exists:
#   1. the tests marked `cuda` (a short training on CUDA; DDP parity on NCCL through torchrun when >= 2 GPUs);
#   2. benchmarks/train_speed.py --device cuda: the tutorial CNN's training img/s in bf16 and fp32, and the
#      inference img/s of the evaluation path;
#   3. the CIFAR-10 GPU recipe, configs/fast/cifar-10-gpu.yaml (airbench-style), timed launch to exit with its
#      test accuracy against 94% (benchmarks/time_to_accuracy.py), when the CIFAR-10 files are here;
# and writes docs/results/gpu_check.json (machine, steps, status, seconds), docs/results/gpu_tests.txt and
# docs/results/gpu_train_speed_{bf16,fp32}.json and docs/results/gpu_cifar10.json. Each step has its own time limit; a failed step is recorded
# and the others still run. Exit status: 0 when every step passed, 1 otherwise, 3 without CUDA.
#
# Usage (from anywhere): bash benchmarks/gpu_check.sh
#   PYTHON=python3 bash benchmarks/gpu_check.sh     use an interpreter that already has torch (and cnnlab's
#                                                   dependencies) instead of .venv, e.g. a GPU image's own
#   GPU_RESULTS=DIR bash benchmarks/gpu_check.sh    write the result files into DIR (default docs/results)
# Without PYTHON, the virtualenv is created only when .venv is missing:
#   python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e '.[dev]'
# (pip uses this machine's configured index; with no network, make .venv beforehand or give PYTHON.)
set -uo pipefail
cd "$(dirname "$0")/.."
say() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
    say "using $PY ($($PY --version 2>&1))"
elif [ ! -x .venv/bin/python ]; then
    say "no .venv here: creating it"
    say "+ python3 -m venv .venv" && python3 -m venv .venv || exit 1
    say "+ .venv/bin/pip install torch==2.13.0" && .venv/bin/pip install torch==2.13.0 || exit 1
    say "+ .venv/bin/pip install -e '.[dev]'" && .venv/bin/pip install -e '.[dev]' || exit 1
    PY=.venv/bin/python
else
    say "using the existing .venv ($(.venv/bin/python --version 2>&1))"
    PY=.venv/bin/python
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, even if .venv has another
RES=${GPU_RESULTS:-docs/results}

if ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    say "torch $($PY -c 'import torch; print(torch.__version__)') sees no CUDA device: nothing to check"
    exit 3
fi
GPUS=$($PY -c 'import torch; print(torch.cuda.device_count())')
NAME=$($PY -c 'import torch; print(torch.cuda.get_device_name(0))')
say "$GPUS x $NAME, torch $($PY -c 'import torch; print(torch.__version__, torch.version.cuda)')"
mkdir -p "$RES"

# The real Fashion-MNIST when CNNLAB_DATA (or the cache) has it, else the bundled 6,000-image sample x 10.
if $PY -c 'from cnnlab.data.datasets import locate; locate("fashion-mnist", download=False)' 2>/dev/null; then
    DATA=(--dataset fashion-mnist)
else
    say "no real Fashion-MNIST here (set CNNLAB_DATA): timing on the bundled sample tiled x10"
    DATA=(--dataset fashion-mnist-sample --tile 10)
fi

STEPS=()
step() {  # step NAME SECONDS COMMAND...: runs it under a time limit, records status and duration
    local name=$1 limit=$2; shift 2
    say "step $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    say "step $name: exit $rc after $((SECONDS - t0)) s"
    STEPS+=("$name $rc $((SECONDS - t0))")
}

# only the files that hold `cuda` tests: the others may import extras (the dashboard's FastAPI, MLflow) that a
# GPU image need not have
CUDA_FILES=$(grep -rl "mark.cuda" tests --include='test_*.py' | tr '\n' ' ')
step cuda_tests 240 bash -c "$PY -m pytest -q -p no:cacheprovider -m cuda -s -rs $CUDA_FILES 2>&1 | tee $RES/gpu_tests.txt; exit \${PIPESTATUS[0]}"
for prec in bf16 fp32; do
    step "train_speed_$prec" 100 $PY benchmarks/train_speed.py --device cuda --precision "$prec" --no-keras \
        --repeats 3 "${DATA[@]}" --json "$RES/gpu_train_speed_$prec.json"
done
if $PY -c 'from cnnlab.data.datasets import locate; locate("cifar-10", download=False)' 2>/dev/null; then
    step cifar10_gpu 240 $PY benchmarks/time_to_accuracy.py configs/fast/cifar-10-gpu.yaml:0.94 \
        --json "$RES/gpu_cifar10.json"
else
    say "no CIFAR-10 here (set CNNLAB_DATA): the CIFAR-10 recipe is not timed"
fi

$PY - "$NAME" "$GPUS" "$RES" "${STEPS[@]}" <<'EOF'
import json, platform, sys, time
import torch
name, gpus, res, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], [s.split() for s in sys.argv[4:]]
out = {"machine": platform.node(), "gpu": name, "gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda,
       "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
       "steps": [{"name": n, "exit": int(rc), "seconds": int(s)} for n, rc, s in steps]}
for prec in ("bf16", "fp32"):
    try:
        out[f"train_speed_{prec}"] = json.load(open(f"{res}/gpu_train_speed_{prec}.json"))
    except OSError:
        pass
try:
    out["cifar10_gpu"] = json.load(open(f"{res}/gpu_cifar10.json"))
except OSError:
    pass
json.dump(out, open(f"{res}/gpu_check.json", "w"), indent=1)
print(json.dumps(out, indent=1))
EOF
failed=0
for s in "${STEPS[@]}"; do set -- $s; [ "$2" = 0 ] || failed=1; done
say "done: $RES/gpu_check.json$( [ $failed = 0 ] && echo ', every step passed' || echo ', some steps FAILED (see above)')"
exit $failed
