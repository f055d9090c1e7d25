#!/usr/bin/env bash
# One Slurm array task per variant of a plan; all write into one shared run folder.
#
#   c2f run plans/exp2-new-filters.toml --list          # 9 runs: indices 0–8
#   sbatch --array=0-8 examples/cluster/slurm-array.sh plans/exp2-new-filters.toml /shared/runs/exp2
#   # when all are done (or any time, for the finished parts):
#   c2f report /shared/runs/exp2 --out /shared/runs/exp2/report
#
#SBATCH --job-name=c2f
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=c2f-%A_%a.log
#SBATCH --requeue
set -euo pipefail
PLAN=${1:?usage: sbatch --array=0-N slurm-array.sh PLAN OUT}
OUT=${2:?usage: sbatch --array=0-N slurm-array.sh PLAN OUT}
# A requeued or resubmitted task continues its run from the last checkpoint.
exec c2f --threads "${SLURM_CPUS_PER_TASK:-1}" run "$PLAN" --out "$OUT" \
    --index "${SLURM_ARRAY_TASK_ID:?not in a Slurm array job}"
