#!/usr/bin/env bash
# Device check for a machine with an NVIDIA GPU, PyTorch (CUDA build) and ONNX Runtime, but no
# TensorRT. Runs, each under its own time limit (about 8 minutes in all):
#   1. the tests that need CUDA (they skip on CPU-only CI),
#   2. `panoptic-ros bench fusion` on CUDA at 1024x2048 for all five models,
#   3. torch on CUDA against ONNX Runtime: `verify-engine` of every shipped checkpoint against its
#      golden file (ONNX Runtime's outputs on the golden frame).
# Worst case 200 + 120 + 5 x 25 s = 7.4 minutes. Everything goes into one folder (default device-check-<UTC time>; or $1), with summary.md.
#   bash scripts/device_check.sh [OUT_DIR]
# `DRY_RUN=1` checks the set-up and prints the commands without running the GPU parts.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-device-check-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
summary=$out/summary.md
models="psn rtps fpsnet spinet lpsnet"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to NAME.log, record the exit status
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee -a "$out/commands.txt"
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "| $name | dry run | - |" >>"$summary"
        return 0
    fi
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    local status=$?
    echo "| $name | exit $status$([ $status = 124 ] && echo ' (time limit)') | $((SECONDS - start)) s |" >>"$summary"
    tail -n 5 "$out/$name.log"
    return 0  # later steps still run
}

{
    echo "# Device check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo '```'
    "$py" - <<'EOF'
import platform
import onnxruntime
import torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"onnxruntime {onnxruntime.__version__} {onnxruntime.get_available_providers()}")
if torch.cuda.is_available():
    print(f"GPU: {torch.cuda.get_device_name(0)}, sm {'.'.join(map(str, torch.cuda.get_device_capability(0)))}")
else:
    print("GPU: none visible to torch")
EOF
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
    echo '```'
    echo
    echo "| step | result | time |"
    echo "|---|---|---|"
} >"$summary"

if [ "${DRY_RUN:-0}" != 1 ] && ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "torch sees no CUDA GPU: nothing to check here" | tee -a "$summary"
    exit 1
fi

# 1. Tests that need CUDA: every test file with a CUDA condition (-rs lists what still skipped, and why).
cuda_tests=$(grep -l "cuda.is_available" test/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086
step cuda-tests 200 "$py" -m pytest -q -rs -p no:cacheprovider $cuda_tests

# 2. Fusion benchmark on CUDA at full Cityscapes resolution.
# shellcheck disable=SC2086
step bench-fusion-cuda 120 "$py" -m panoptic_ros.cli bench fusion --models $models --sizes 1024x2048 \
    --runtimes cuda --iterations 5 --warmup 2 --json "$out/bench_fusion_cuda.json" --markdown

# 3. torch on CUDA vs ONNX Runtime (the golden files hold ONNX Runtime's outputs on the golden frame).
for model in $models; do
    step "agreement-$model" 25 "$py" -m panoptic_ros.cli verify-engine --checkpoint "models/$model.pt" \
        --golden "models/$model.golden.npz" --device cuda
done

if [ "${DRY_RUN:-0}" != 1 ]; then
    {
        echo
        echo "## Fusion on CUDA, 1024x2048"
        echo
        sed -n '/^| model/,/^$/p' "$out/bench-fusion-cuda.log"
        echo
        echo "## torch (CUDA) vs ONNX Runtime"
        echo
        for model in $models; do
            echo "- $model: $(grep -E 'panoptic id agreement|semantic agreement|^(PASS|FAIL)' "$out/agreement-$model.log" \
                | tr '\n' ' ')"
        done
        echo
        echo "## Skipped CUDA tests"
        echo
        grep -E "^SKIPPED" "$out/cuda-tests.log" || echo "none"
    } >>"$summary"
fi
echo "results: $out (summary: $summary)"
