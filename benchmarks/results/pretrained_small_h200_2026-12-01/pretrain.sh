#!/usr/bin/env bash
# Pretrain the demo's small model on the embedded 3BPA train_300K (device run).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
python3 -c "import torch, triton, ase, vesin, yaml, tqdm, safetensors, e3nn; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,driver_version --format=csv
python3 -m lpmace train /dev/null model.channels=32 model.max_L=1 model.correlation=3 epochs=150 \
   stage_two_epoch=111 device=cuda backend=compiled progress=false max_time=330 \
   output_dir=/tmp/pretrain 2>&1 | tee $OUT/pretrain.log | grep --line-buffered -v "^$" | tail -n 400
ls -la /tmp/pretrain; cp /tmp/pretrain/model.safetensors /tmp/pretrain/log.jsonl /tmp/pretrain/test_metrics.json /tmp/pretrain/config.yaml $OUT/
