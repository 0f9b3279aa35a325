#!/usr/bin/env bash
# The second prepared GPU command, for the device minutes left after `bash bench/gpu.sh`.
#
#   bash bench/gpu_followup.sh            on the GPU machine, after gpu.sh (<= FOLLOWUP_BUDGET_S, 240 s)
#   bash bench/gpu_followup.sh --smoke    the same steps on CPU with tiny shapes (CI runs it)
#
# Steps, each under its own time limit, results in runs/gpu-followup (packed into $OUT):
# 1. build, only if the machine was handed back since gpu.sh (a fresh one has no package): the
#    extension prebuilt on the CPU machine if it fits (bench/install_gpu.sh), else compiled;
# 1b. the kernel benchmarks (bench/test_kernels.py: gather/scatter GB/s against copy, the fused
#    add + LayerNorm, varlen attention) -> records.jsonl; gpu.sh's suite stage may not reach
#    past them (run 5 spent its 117 s there);
# 2. graph mode at the paper's batch sizes (1, 2, 4, 8, 15; gpu.sh's scaling stage has
#    1/16/64/128), with dense layers (graphs.DENSE_ROWS: where they beat compact ones), and
#    eager MI with dense layers (encoder.DENSE_ROWS),
#    full depth with one graph per layer instead of one for the stack (graphs.STACK),
#    attention by PyTorch's FlashAttention-2 (attention.FLASH), eager and in graph mode,
#    the fused add + LayerNorm by the C++ CUDA kernel (norm.CUDA_CPP), eager and in graph mode,
#    gpu_scaling.py --graphs --stack --flash --cudanorm --dense --eager-dense, pool 64 -> followup_scaling.json
#    (run 5's follow-up decided --unfused, --dispatcher and --devplan at these sizes: the eager
#    path no longer fuses below norm.EAGER_ROWS, ops.DIRECT and graphs.PLAN_ON_HOST stay;
#    gpu.sh's scaling stage keeps --unfused);
# 3. where the host time of an eager and a graph-mode forward goes (torch.profiler, batch 1
#    and 16: launches, syncs, self CPU time per op; GPU kernel time, so that targets.py splits
#    batch 1's adaptive-vs-fixed ratio the same way) -> host_profile.{txt,json};
# 3a. one forward's GPU kernels at batch 1, 16 and 128, eager and graph mode, full depth and MI
#    (run 5: MI at 0.69 of the FLOP ideal at batch 16 in graph mode, behind full depth at batch 1;
#    targets.py splits each into what the kernels lose on the smaller layers and the time the GPU
#    waits; batch 1 here too, so that this early step answers it even if step 3 is cut; at 128
#    graph mode 0.80x eager: half padding, half the GEMM cuBLAS picks) -> kernels/host_profile.{txt,json} (kernels_128/ in run 5);
# 3b. batch 1 at N = 2, 4, 8 (fixed, MI eager with dense layers; graph mode: fixed, MI compact,
#    MI dense): the batch-1 target
#    says "at any N"; step 2 has N = 12 -> nsweep/gpu_scaling.json; pool 64 (run 5: 32 documents,
#    19 s, and dense over compact at N = 2, 4, 8 read 1.01 / 0.86 / 1.01x, too noisy to decide);
# 4. torch.compile's traced route on CUDA (never run there) -> compile.txt.
# (The C++ error probe with --inline is no longer a step: run 5's prebuilt gcc-12 extension
# raised where run 4's own gcc-13.3 build crashed, which answered it.)
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
# Results in $DEST; with $OUT set (the device tool's result folder, which takes back at most 8
# files) packed after every step into $OUT/followup_results.tar.gz, with the two summaries
# beside it: a run cut short still returns what it finished.
DEST=${FOLLOWUP_DIR:-runs/gpu-followup}
mkdir -p "$DEST"
FAILED=()
# FOLLOWUP_BUDGET_S: the whole script's wall time (default 240 s on a GPU): each step's limit is
# cut to what is left (15 s kept for the plot), a step with under 10 s left is skipped, so the
# script ends inside it.
[ "$SMOKE" = 1 ] && BUDGET=${FOLLOWUP_BUDGET_S:-100000} || BUDGET=${FOLLOWUP_BUDGET_S:-240}
DEADLINE=$(( $(date +%s) + BUDGET - 15 ))

pack() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT"
  tar czf "$OUT/followup_results.tar.gz" -C "$(dirname "$DEST")" "$(basename "$DEST")"
  for f in followup_scaling.json gpu_scaling.json host_profile.txt; do [ -f "$DEST/$f" ] && cp "$DEST/$f" "$OUT/"; done
  return 0
}

step() {  # step NAME LIMIT_S LOG COMMAND...
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$(date +%s)
  local left=$(( DEADLINE - t0 ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "=== $name: skipped (FOLLOWUP_BUDGET_S spent)"; FAILED+=("$name (no time left)"); return 0
  fi
  echo "=== $name (limit ${limit}s)"
  timeout -s INT -k 10 "$limit" "$@" > "$DEST/$log" 2>&1
  local rc=$?
  tail -25 "$DEST/$log"
  echo "=== $name: rc=$rc, $(( $(date +%s) - t0 )) s"
  [ "$rc" -ne 0 ] && FAILED+=("$name (rc $rc)")
  pack
  return 0
}

if [ "$SMOKE" = 1 ]; then
  export TRITON_INTERPRET=1 BENCH_QUICK=1
  step suite 300 suite.txt env BENCH_RECORDS="$DEST/records.jsonl" python -m pytest bench/test_kernels.py \
    --benchmark-only -q -p no:cacheprovider
  step scaling 300 followup_scaling.txt python bench/gpu_scaling.py --pool 4 --batches 1 2 --rounds 1 \
    --models fixed mi --graphs --host1 --stack --flash --cudanorm --dense --eager-dense --out "$DEST"
  step profile 300 host_profile_log.txt python bench/gpu_host_profile.py --batches 1 --forwards 2 --top 5 \
    --models fixed mi fixed+graphs --out "$DEST"
  step kernels 300 kernels_log.txt python bench/gpu_host_profile.py --batches 4 --forwards 2 --top 3 --kernels 5 \
    --models fixed mi fixed+graphs --out "$DEST/kernels"
  step nsweep 300 nsweep.txt python bench/gpu_scaling.py --pool 4 --batches 1 --N 2 --rounds 1 \
    --models fixed mi+dense fixed+graphs mi+graphs mi+graphs-dense --out "$DEST/nsweep"
  step compile 300 compile.txt python bench/compile_speed.py --device cpu --route traced --patterns 3 --repeats 2
else
  if ! python -c "import adaptive_encoder._C" 2>/dev/null; then
    step build 150 build.txt bash bench/install_gpu.sh  # the prebuilt extension if one fits, else a build
  fi
  step suite 75 suite.txt env BENCH_RECORDS="$DEST/records.jsonl" python -m pytest bench/test_kernels.py \
    --benchmark-only -q -p no:cacheprovider
  step kernels 60 kernels_log.txt python bench/gpu_host_profile.py --batches 1 16 128 --forwards 3 --top 5 --kernels 15 \
    --models fixed fixed+graphs mi mi+graphs --out "$DEST/kernels"
  step scaling 120 followup_scaling.txt python bench/gpu_scaling.py --pool 64 --batches 1 2 4 8 15 \
    --models fixed mi --graphs --host1 --stack --flash --cudanorm --dense --eager-dense --out "$DEST"
  step profile 60 host_profile_log.txt python bench/gpu_host_profile.py --batches 1 16 --kernels 5 \
    --models fixed mi mi+host fixed+graphs mi+graphs hf_sdpa --out "$DEST"
  step nsweep 60 nsweep.txt python bench/gpu_scaling.py --pool 64 --batches 1 --N 2 4 8 \
    --models fixed mi+dense fixed+graphs mi+graphs mi+graphs-dense --out "$DEST/nsweep"
  step compile 90 compile.txt python bench/compile_speed.py --device cuda --route traced
fi
if [ -f "$DEST/gpu_scaling.json" ]; then
  mv "$DEST/gpu_scaling.json" "$DEST/followup_scaling.json"
  python bench/plot_scaling.py "$DEST/followup_scaling.json" --out "$DEST" || FAILED+=("plot")
  rm -f "${OUT:-/nonexistent}/gpu_scaling.json"  # packed again below, under its new name
fi
pack
ls -la "$DEST" ${OUT:+"$OUT"}
if [ "${#FAILED[@]}" -ne 0 ]; then
  echo "gpu_followup.sh: FAILED steps: ${FAILED[*]}"
  exit 1
fi
echo "gpu_followup.sh: all steps passed"
