# SHARDS=4 NODES=2 bash recipes/ray/teacher.sh --config recipes/generate_multinode.yaml
# A teacher too big for one node (tensor x pipeline parallel over NODES nodes) on Ray, under Slurm: each array task
# brings up its own Ray cluster (the head on its first node, a worker on each other node), waits until all NODES
# nodes have joined, then runs `distill generate --shard I/SHARDS --distributed-executor-backend ray` on it; vLLM
# places its TP x PP workers on the cluster. Without Slurm, the same by hand: `ray start --head --port 6379` on one
# node, `ray start --address HEAD:6379` on the others, then the distill line below with RAY_ADDRESS=HEAD:6379.
set -euo pipefail
SHARDS=${SHARDS:-4}
NODES=${NODES:-2}
ARGS=$(printf ' %q' "$@")
mkdir -p logs
sbatch --array="0-$((SHARDS - 1))" <<JOB
#!/bin/bash
#SBATCH --job-name=distill-ray-teacher
#SBATCH --nodes=${NODES}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
mapfile -t NODELIST < <(scontrol show hostnames "\$SLURM_JOB_NODELIST")
HEAD=\${NODELIST[0]}
PORT=6379
srun --nodes=1 --ntasks=1 --nodelist="\$HEAD" ray start --head --port="\$PORT" --block &
sleep 20
for NODE in "\${NODELIST[@]:1}"; do
  srun --nodes=1 --ntasks=1 --nodelist="\$NODE" ray start --address="\$HEAD:\$PORT" --block &
done
export RAY_ADDRESS="\$HEAD:\$PORT"
for _ in \$(seq 60); do  # until every node has joined
  [ "\$(ray status 2>/dev/null | grep -c node_ || true)" -ge ${NODES} ] && break
  sleep 10
done
distill generate${ARGS} --distributed-executor-backend ray --shard "\${SLURM_ARRAY_TASK_ID}/${SHARDS}"
JOB
