#!/usr/bin/env bash
# The GPU-relevant benchmarks in one short device run: under 8 minutes on one H100/H200 with 16 CPU cores.
#
#   bash bench/run_gpu.sh            # from anywhere; sets the environment up with bench/gpu_setup.sh first
#
# Runs, most important first, each under its own timeout and within a total budget (BENCH_BUDGET_S, default 430 s;
# a benchmark that would start with under 30 s left is skipped and counted as failed):
#   inference        bench_inference.py --device cuda --tf32 (paper-sized VAVL and fusion model, batch 1/8/32)
#   training         bench_training.py --device cuda --rounds 1 (per-batch overhead proxy, paper-sized epoch)
#   pipeline         bench_pipeline.py --device cuda --quick (pipeline overhead, long-file time and memory)
#   chunk512         bench_inference.py at batch 32 with visual_backbone_chunk_size 512 instead of 64 (fewer,
#                    larger EfficientNet forwards), into inference_chunk512.json
#   compile          bench_inference.py --compile at batch 8 (fp32, bf16-cl and bf16-cl+compile): compile time
#                    is unknown, so it runs after the others, into inference_compile.json
#   video_preprocess bench_video_preprocess.py --device cuda --repeats 1 (CPU decode + detect + crop)
#   onnx             bench_onnx.py --device cuda --quick (only where onnxruntime is installed)
# It goes on past a failing benchmark and exits 1 at the end if any failed. The JSON reports (bench/results/*.json)
# and each benchmark's log (bench/results/logs/) are copied to $OUT when it is set, after every benchmark.
# PYTHON (default python) picks the interpreter.

set -u
cd "$(dirname "$0")/.." || exit 1
start=$SECONDS
budget=${BENCH_BUDGET_S:-430}
PYTHON=${PYTHON:-python}
export PYTHON
# shellcheck source=bench/gpu_setup.sh
source bench/gpu_setup.sh >/dev/null || exit 1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
logs=bench/results/logs
mkdir -p "$logs"
failed=()
summary=()

copy_out() {
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT/logs"
    cp bench/results/*.json "$OUT"/ 2>/dev/null
    cp "$logs"/*.log "$OUT/logs"/ 2>/dev/null
    return 0
}

bench() { # name timeout_s command...
    local name=$1 limit=$2
    shift 2
    local left=$((budget - (SECONDS - start)))
    if ((left < 30)); then
        echo "== $name: skipped, ${left}s of the ${budget}s budget left"
        failed+=("$name")
        summary+=("$name: skipped (budget)")
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (timeout ${limit}s): $*"
    local began=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$logs/$name.log" | grep -v -i "warn"
    local rc=${PIPESTATUS[0]}
    local took=$((SECONDS - began))
    if ((rc != 0)); then
        failed+=("$name")
        summary+=("$name: FAILED rc=$rc after ${took}s$( ((rc == 124 || rc == 137)) && echo ' (timeout)')")
    else
        summary+=("$name: ok in ${took}s")
    fi
    copy_out
}

if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "run_gpu: torch sees no CUDA device here" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

bench inference 210 "$PYTHON" bench/bench_inference.py --device cuda --tf32
bench training 150 "$PYTHON" bench/bench_training.py --device cuda --rounds 1
bench pipeline 150 "$PYTHON" bench/bench_pipeline.py --device cuda --quick
bench chunk512 60 "$PYTHON" bench/bench_inference.py --device cuda --models vavl --batch-sizes 32 \
    --modes fp32,bf16-cl --visual-chunk-size 512 --output bench/results/inference_chunk512.json
bench compile 150 "$PYTHON" bench/bench_inference.py --device cuda --models vavl --batch-sizes 8 --modes fp32,bf16-cl \
    --compile --compile-modes bf16-cl --output bench/results/inference_compile.json
bench video_preprocess 60 "$PYTHON" bench/bench_video_preprocess.py --device cuda --repeats 1
if "$PYTHON" -c "import onnxruntime" 2>/dev/null; then
    bench onnx 90 "$PYTHON" bench/bench_onnx.py --device cuda --quick
else
    summary+=("onnx: not run (no onnxruntime here)")
fi

copy_out
echo
echo "run_gpu: $((SECONDS - start))s in all"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "run_gpu: failed: ${failed[*]}"
    exit 1
fi
