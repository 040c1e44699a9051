#!/usr/bin/env bash
# Issue #16's GPU checks in one script of at most 8 minutes, for a machine with a CUDA GPU and the project installed
# (`pip install -e ".[test]"` with that machine's CUDA torch, or wheels installed into $NEED_SITE by the caller):
#   1. the GPU-marked tests;
#   2. bench/speed.py on CUDA at 256² and 512², cpu and paper network profiles (fresh weights: timing only);
#   3. bench/throughput.py --device cuda (the reconstruct flow on one worker per GPU, shipped cpu weights).
# Results land in $RESULTS (default bench/results/): speed_cuda_cpu.json, speed_cuda_paper.json,
# throughput_cuda.json, and gpu_check.log. Each step has its own time limit, so one that hangs cannot take the rest.
#
#   bash bench/gpu_check.sh                      # on the GPU machine, from the repository root
#   RESULTS=$OUT bash bench/gpu_check.sh         # results elsewhere
set -uo pipefail

results=${RESULTS:-bench/results}
mkdir -p "$results"
log="$results/gpu_check.log"
export PYTHONUNBUFFERED=1
if [ -n "${NEED_SITE:-}" ]; then
    export PYTHONPATH="$NEED_SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible: nothing to check")' ||
    exit 1
python3 -c 'import torch; print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)' | tee "$log"

failed=0
step() {  # step LIMIT_S NAME COMMAND...: run one check under its time limit, logging it; a failure is counted
    local limit=$1 name=$2
    shift 2
    echo "== $name (limit ${limit}s)" | tee -a "$log"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local status=${PIPESTATUS[0]}
    echo "== $name: exit $status after $((SECONDS - started)) s" | tee -a "$log"
    [ "$status" -eq 0 ] || failed=$((failed + 1))
}

step 60 "GPU-marked tests" python3 -m pytest -m gpu -n 0 -q -p no:cacheprovider
step 120 "speed, cpu profile" python3 bench/speed.py --device cuda --sizes 256,512 --doses 0.25 --profile cpu \
    --in-process --output "$results/speed_cuda_cpu.json"
step 120 "speed, paper profile" python3 bench/speed.py --device cuda --sizes 256,512 --doses 0.25 --profile paper \
    --in-process --output "$results/speed_cuda_paper.json"
step 150 "throughput" python3 bench/throughput.py --device cuda --output "$results/throughput_cuda.json"
echo "gpu checks: $failed failed" | tee -a "$log"
exit "$failed"
