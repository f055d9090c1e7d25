#!/usr/bin/env bash
# One Slurm array task per variant of a plan; all write into one shared run folder.
#
#   c2f run plans/exp2-new-filters.toml --list          # 9 runs: indices 0–8
#   sbatch --array=0-8 examples/cluster/slurm-array.sh plans/exp2-new-filters.toml /shared/runs/exp2
#   # when all are done (or any time, for the finished parts):
#   c2f report /shared/runs/exp2 --out /shared/runs/exp2/report
#
# A plan with a [frontier]: its sweep runs first (`--list | grep sweep`), the rest after:
#   SWEEP=$(sbatch --parsable --array=0-2,27-29 slurm-array.sh plans/payoff.toml runs/payoff)
#   sbatch --array=3-26,30-41 --dependency=afterok:$SWEEP slurm-array.sh plans/payoff.toml runs/payoff
#
# Options on the sbatch command line override these (e.g. --cpus-per-task=2 --mem=2G on
# small nodes: a request no node can meet is refused at submission). Relative paths are
# relative to the submission folder (or --chdir), where the logs go too. `c2f` must be on
# the PATH the job inherits (sbatch exports the submitting shell's), or set C2F.
#
#SBATCH --job-name=c2f
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=c2f-%A_%a.log
#SBATCH --open-mode=append
#SBATCH --requeue
set -euo pipefail
PLAN=${1:?usage: sbatch --array=0-N slurm-array.sh PLAN OUT}
OUT=${2:?usage: sbatch --array=0-N slurm-array.sh PLAN OUT}
TASK=${SLURM_ARRAY_TASK_ID:?not in a Slurm array job}
# A requeued task (scontrol requeue, preemption, a node failure) starts this script again;
# the log is appended to, and c2f continues the run from its last checkpoint.
echo "c2f array task $TASK (requeued ${SLURM_RESTART_COUNT:-0} times) on $(hostname)"
exec "${C2F:-c2f}" --threads "${SLURM_CPUS_PER_TASK:-1}" run "$PLAN" --out "$OUT" --index "$TASK"
