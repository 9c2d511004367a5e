# SHARDS=8 bash recipes/slurm/generate.sh --config recipes/generate_r1.yaml
# A Slurm job array over `distill generate --shard I/SHARDS`: array task I generates partition I of the problems (by a
# hash of the problem id) on one node into the recipe's --out, as DIR/shard-I-of-SHARDS. Run the same line again to
# resume (finished chunks are skipped; a requeued task resumes too); read DIR as one dataset (filter, sft, eval do).
# The arguments are distill generate's own. Edit the #SBATCH lines below for your cluster (partition, account, GPUs).
set -euo pipefail
SHARDS=${SHARDS:-8}
ARGS=$(printf ' %q' "$@")
mkdir -p logs
sbatch --array="0-$((SHARDS - 1))" <<JOB
#!/bin/bash
#SBATCH --job-name=distill-generate
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
distill generate${ARGS} --shard "\${SLURM_ARRAY_TASK_ID}/${SHARDS}"
JOB
