#!/usr/bin/env bash
# Multi-node DDP training with torchrun: run this on every node.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 ./deploy/torchrun/train-multinode.sh   (node 0)
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 ./deploy/torchrun/train-multinode.sh   (node 1)
# A worker that dies (OOM, SIGKILL, lost node) makes torchrun restart every worker, up to
# MAX_RESTARTS times; each restart resumes from the last checkpoint in the config's
# ModelCheckpoint directory, which must be on storage every node sees.
# Ports: MASTER_PORT for the rendezvous, and MASTER_PORT+1+attempt for each attempt's
# process group (cloud_trainer.cli gives every restart a fresh store).
set -euo pipefail
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
NPROC=${NPROC:-$(nproc --all 2>/dev/null | awk '{print ($1 >= 2 ? 2 : 1)}')}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
MAX_RESTARTS=${MAX_RESTARTS:-3}
CONFIG=${CONFIG:-cloud_trainer/configs/digits.yaml}

exec torchrun \
  --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  --max-restarts "$MAX_RESTARTS" \
  -m cloud_trainer.cli train fit --config "$CONFIG" -- \
  --trainer.strategy ddp --trainer.num_nodes "$NNODES" --trainer.devices "$NPROC" "$@"
