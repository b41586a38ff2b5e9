#!/usr/bin/env bash
# session 31, last call: GPU tests (dynamics, ForwardGraphs' new paths), MD engine speed, `lpmace md` on W2, 256 cells, benzene.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
L=$OUT/run.log; D=/tmp/mdcli
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
timeout 45 python3 -m pytest -m gpu tests/dynamics tests/test_dynamics.py tests/test_forward_graphs.py \
  -k "positions or cuda" -p no:cacheprovider -rA -q > $OUT/pytest_md.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest_md.log) $(el)" | tee -a $L
timeout 80 python3 benchmarks/md_engine_speed.py --steps 40 --out $OUT/md > $OUT/md_engine.log 2>&1
echo "md_engine rc $? $(el)" | tee -a $L; grep -v Warn $OUT/md_engine.log | tail -14 | tee -a $L
python3 benchmarks/md_cli_inputs.py $D || exit 1
md() {  # tag, structure, then lpmace md arguments
  local tag=$1 s=$2; shift 2
  timeout 30 python3 -m lpmace md $D/$s --model $D/medium.safetensors --out $D/$tag.xyz --log $D/$tag.csv "$@" > $D/$tag.log 2>&1
  echo "$tag rc $? $(el): lpmace md $s $*" | tee -a $L; tail -9 $D/$tag.log | tee -a $L
}
md w2_torch_bf16 w2.xyz --engine torch --precision bf16-mixed --steps 400 --interval 100
md benzene_torch_bf16 benzene.xyz --engine torch --precision bf16-mixed --steps 2000 --interval 100
cd $D && tar czf $OUT/md_cli.tgz *.log *.csv *.summary.json; cd $OUT && tar czf md_engine.tgz md; rm -rf md
echo "done $(el)" | tee -a $L
