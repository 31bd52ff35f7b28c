#!/usr/bin/env bash
# The GPU training benchmarks of issue 4, in one go (a lent GPU machine has no Ray and no hub access).
#
# Needs, in an ignored folder the call carries (default .devbench/):
#   tok/  a BERT uncased tokenizer (MiniLM's files: vocab.txt, tokenizer.json, tokenizer_config.json, ...)
#   whl/  wheels the machine lacks (datasets, dill, multiprocess for its Python)
# Made here with:
#   m=$(.venv/bin/python -c 'from mrlkit.models import resolve_model as r; print(r("sentence-transformers/all-MiniLM-L6-v2"))')
#   mkdir -p .devbench/tok && cp $m/{config.json,special_tokens_map.json,tokenizer.json,tokenizer_config.json,vocab.txt} .devbench/tok/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .devbench/whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# Writes JSON results and logs under OUT (default benchmarks/results/gpu).
#   bash benchmarks/gpu_train.sh [levers|recipe|full|all]
# levers and recipe take up to ~450 and ~500 s: on a machine with a 600 s limit per command, run them one per call.
set -uo pipefail
DEV=${DEVBENCH:-.devbench}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
if [ -d "$DEV/whl" ]; then
  python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$DEV"/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=pkg${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader
python3 -c "import torch, transformers, sentence_transformers as st; print(torch.__version__, transformers.__version__, st.__version__)"
bench() {  # name, timeout seconds, args...
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 benchmarks/train_throughput.py --model-shape bge-base --use-gpu --peak-tflops 989 \
    --tokenizer "$DEV/tok" --out "$OUT/$name.json" "$@" >"$OUT/$name.log" 2>&1
  echo "== $name rc=$?"; grep -E "^(plain|worker|ray)[^ ]*: |ratio|measured" "$OUT/$name.log"
}
what=${1:-all}
# speed levers side by side on the seed dataset's token lengths, one epoch of 3.2k pairs
# (worker+unfused: the seed's per-dim MatryoshkaLoss; worker: the fused loss; +merge: one encoder pass per step;
#  +loaders: batches tokenized in a loader process; +nodropout: train.dropout=0)
[[ $what == all || $what == levers ]] && bench train_gpu_levers 450 --lengths financial --seq-len 512 --pairs 3200 \
  --epochs 1 --repeats 2 \
  --modes plain,plain+nocudnn,worker+unfused,worker,worker+merge,worker+merge+loaders,worker+bucket+merge,worker+bucket,worker+merge+nodropout
# the full seed recipe, 6.3k pairs x 4 epochs (plain with cuDNN attention takes ~5 min: see levers for it)
[[ $what == all || $what == recipe ]] && bench train_gpu_recipe 500 --lengths financial --seq-len 512 --pairs 6300 \
  --epochs 4 --repeats 1 --modes worker,worker+merge+loaders,worker+bucket+merge+loaders+nodropout
# the compute-bound case: every text 256 tokens
[[ $what == all || $what == full ]] && bench train_gpu_full256 100 --lengths full --seq-len 256 --pairs 2048 \
  --epochs 1 --repeats 2 --modes plain,plain+nocudnn,worker,worker+merge
exit 0
