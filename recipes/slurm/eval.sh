# SHARDS=4 OUT=runs/eval bash recipes/slurm/eval.sh --config recipes/eval_r1.yaml
# A Slurm job array over `distill eval --shard I/SHARDS` (task I generates and grades partition I of every task's
# problems into OUT/shard-I-of-SHARDS), then one job that waits for them all, `distill eval merge OUT`, which writes
# OUT/results.json: the results one unsharded run would have written. The arguments are distill eval's own.
set -euo pipefail
SHARDS=${SHARDS:-4}
OUT=${OUT:?set OUT to the eval output folder, e.g. OUT=runs/eval}
ARGS=$(printf ' %q' "$@")
QOUT=$(printf '%q' "$OUT")
mkdir -p logs
ARRAY=$(sbatch --parsable --array="0-$((SHARDS - 1))" <<JOB
#!/bin/bash
#SBATCH --job-name=distill-eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
distill eval${ARGS} --out ${QOUT} --shard "\${SLURM_ARRAY_TASK_ID}/${SHARDS}"
JOB
)
sbatch --dependency="afterok:${ARRAY%%;*}" <<JOB
#!/bin/bash
#SBATCH --job-name=distill-eval-merge
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=1:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
distill eval merge ${QOUT}
JOB
