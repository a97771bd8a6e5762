#!/usr/bin/env bash
# Runs KF-GRPO training on every host of a Cloud TPU pod slice (one process per host).
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a WORKDIR=gs://bucket/runs/kf7b \
#   DATA_DIR=/data/videor1_shards HF_DIR=/models/Qwen2.5-VL-7B-Instruct \
#   INIT_FROM=gs://bucket/ckpt/qwen7b/params bash launch/tpu_pod.sh [--config.x=y ...]
#
# Every host must already hold this repository at REPO_DIR (default: ~/chronoforge-jax)
# and the data and weights at the same paths (or use gs:// paths). With SETUP=1 every host
# first builds REPO_DIR/.venv with `pip install -e '.[tpu,hf,video]'`: jax, jaxlib and the
# libtpu that the tested jax release pins (setup.py), never a newer jax. Check the slice
# first from any machine: python -m launch.plan --config=$CONFIG --topology=v5p-16 --compile
# jax.distributed.initialize() reads the pod topology from the TPU environment
# (--distributed). Extra arguments are passed to launch.train.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
: "${DATA_DIR:?set DATA_DIR}" "${HF_DIR:?set HF_DIR}"
REPO_DIR="${REPO_DIR:-\$HOME/chronoforge-jax}"
CONFIG="${CONFIG:-configs/kf_grpo.py:qwen2_5_vl_7b}"
INIT_FLAG=""
if [[ -n "${INIT_FROM:-}" ]]; then INIT_FLAG="--config.ckpt.init_from=${INIT_FROM}"; fi

SETUP_CMD=""
if [[ "${SETUP:-0}" == "1" ]]; then
  SETUP_CMD="(test -x .venv/bin/python || python3 -m venv .venv) && \
    .venv/bin/pip install --quiet -e '.[tpu,hf,video]' && "
fi

CMD="cd ${REPO_DIR} && ${SETUP_CMD}.venv/bin/python -m launch.train --distributed \
  --config=${CONFIG} --workdir=${WORKDIR} \
  --config.input.data_dir=${DATA_DIR} --config.input.tokenizer_dir=${HF_DIR} \
  --config.model.hf_dir=${HF_DIR} ${INIT_FLAG} $*"

echo "running on all workers of ${TPU_NAME}: ${CMD}"
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="${CMD}"
