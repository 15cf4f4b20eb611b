#!/usr/bin/env bash
# One prepared GPU session: the CUDA tests, rollout throughput, outer-step rates against the bf16 matmul rate
# (bench_throughput.py) and the full test-time scaling table.
#
#   bash benchmarks/gpu_check.sh HARD.csv.gz [RESULTS_DIR]
#
# HARD.csv.gz is the shared hard set (puzzles5_forum_hardest_1905_11+.csv.gz); RESULTS_DIR defaults to $OUT, or
# gpu-results. Runs from the repository root with the machine's own python3 (torch with CUDA, h5py, numba, scipy)
# and the package on PYTHONPATH, so nothing is installed. Each scaling table is 48 puzzles x breadths 1, 8, 64 x
# depth 1,024 (3.6M puzzle-steps); the whole script is meant to fit in one 10-minute device call on an H200, an
# estimate never measured (no GPU was lent yet). Each step's output is kept in its own file, and a failing step
# does not stop the ones after it. The scaling tables append per-puzzle outcomes to RESULTS_DIR/scaling_*.csv batch
# by batch: a session cut short keeps every finished batch, and the same command on a later session resumes.
set -uo pipefail
HARD=${1:?usage: bash benchmarks/gpu_check.sh HARD.csv.gz [RESULTS_DIR]}
RESULTS=${2:-${OUT:-gpu-results}}
mkdir -p "$RESULTS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

step() {  # step NAME COMMAND...: run, show and keep the output and the wall time
    local name=$1; shift
    local start=$SECONDS
    "$@" 2>&1 | tee "$RESULTS/$name.txt"
    echo "[$name: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s]" | tee -a "$RESULTS/$name.txt"
}

step gpu nvidia-smi
step tests "$PY" -m pytest tests/test_gpu.py tests/test_dynamics_fixed_points.py -p no:cacheprovider -rs
step throughput "$PY" benchmarks/bench_rollout.py throughput --device cuda --n 1024 --depth 16 --batch-size 1024
step step_rates "$PY" benchmarks/bench_throughput.py --device cuda --sizes shipped,paper --batch 1024 --paper-batch 256
step scaling_hard "$PY" benchmarks/bench_rollout.py scaling --device cuda --data "$HARD" --n 48 \
    --depths 1,4,16,64,256,1024 --breadths 1,8,64 --batch-size 48 --results "$RESULTS/scaling_hard.csv"
step scaling_easy "$PY" benchmarks/bench_rollout.py scaling --device cuda --difficulty 1-5 --n 48 \
    --depths 1,4,16,64,256,1024 --breadths 1,8,64 --batch-size 48 --results "$RESULTS/scaling_easy.csv"
