# NODES=2 GPUS=8 bash recipes/slurm/sft.sh --config recipes/sft_r1_qwen_math_7b.yaml
# Multi-node SFT: one Slurm job of NODES nodes, one `accelerate launch` per node (srun), NODES x GPUS processes in
# all, with ZeRO-3 by default (ACCELERATE_CONFIG=distill/train/accelerate/ddp.yaml, zero2.yaml or fsdp.yaml for the
# others). The arguments are distill sft's own. Rerun the same line to resume from the newest complete checkpoint.
# Samples per optimizer step = NODES x GPUS x per_device_train_batch_size x gradient_accumulation_steps.
set -euo pipefail
NODES=${NODES:-2}
GPUS=${GPUS:-8}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-distill/train/accelerate/zero3.yaml}
ARGS=$(printf ' %q' "$@")
mkdir -p logs
sbatch <<JOB
#!/bin/bash
#SBATCH --job-name=distill-sft
#SBATCH --nodes=${NODES}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=${GPUS}
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=72:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
export HEAD=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n 1)
# One launcher per node; each reads its rank from Slurm on its own node (hence the single quotes).
srun --ntasks-per-node=1 bash -c 'accelerate launch --config_file ${ACCELERATE_CONFIG} \
  --num_machines ${NODES} --num_processes $((NODES * GPUS)) --machine_rank \$SLURM_NODEID \
  --main_process_ip \$HEAD --main_process_port 29500 -m distill.cli sft${ARGS}'
JOB
