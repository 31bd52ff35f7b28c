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
#     --platform manylinux2014_x86_64 -d .devbench/whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
#     sentence-transformers==6.2.0 transformers==5.24.0   (the versions CI tests; the image has older ones)
# Writes JSON results and logs under OUT (default benchmarks/results/gpu).
#   bash benchmarks/gpu_train.sh [check,levers,recipe,full,mfu,pretok,unpad,...|all]   (one part or several, comma-separated)
# each part is bounded (check 100 s, levers 170, recipe 150, full 110, profile 150, *_loaders 110-150, mfu 280, pretok 200, unpad 200): four parts
# fit a 600 s command and its 8 files (check,recipe,levers,full; profile,full_loaders,recipe_loaders,levers_loaders).
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
has() { [[ $what == all || ",$what," == *",$1,"* ]]; }
# train.cuda_graphs computes what eager steps compute (gradients and weights within bf16's error)
has check && { timeout 100 python3 benchmarks/cuda_graphs_check.py --tokenizer "$DEV/tok" \
  --out "$OUT/cuda_graphs_check.json" >"$OUT/cuda_graphs_check.log" 2>&1; echo "== cuda_graphs_check rc=$?";
  tail -1 "$OUT/cuda_graphs_check.log" | cut -c1-300; grep -E "^\{'merged_one_pass" "$OUT/cuda_graphs_check.log" | cut -c1-600; }
# speed levers side by side on the seed dataset's token lengths, one epoch of 3.2k pairs
# (worker: the fused loss; +merge: one encoder pass per step; +graphs: train.cuda_graphs; +nodropout: train.dropout=0;
#  +bucket: train.length_bucketing). The most telling modes first: a timeout cuts the last ones.
has levers && bench train_gpu_levers 170 --lengths financial --seq-len 512 --pairs 3200 \
  --epochs 1 --repeats 1 \
  --modes plain+nocudnn,worker+bucket+graphs+nodropout,worker+bucket+merge+graphs+nodropout,worker+bucket+nodropout,worker+graphs
# the full seed recipe, 6.3k pairs x 4 epochs (plain with cuDNN attention takes ~5 min: see levers for it)
has recipe && bench train_gpu_recipe 150 --lengths financial --seq-len 512 --pairs 6300 \
  --epochs 4 --repeats 1 --modes worker+bucket+graphs+nodropout,worker+bucket+merge+graphs+nodropout
# the compute-bound case: every text 256 tokens
has full && bench train_gpu_full256 110 --lengths full --seq-len 256 --pairs 2048 \
  --epochs 1 --repeats 1 --modes plain+nocudnn,worker+graphs,worker+merge+graphs
# the same three with batches tokenized in loader processes (+loaders: 1, +loaders2: 2), overlapping the GPU's work
has levers_loaders && bench train_gpu_levers_loaders 110 --lengths financial --seq-len 512 --pairs 3200 \
  --epochs 1 --repeats 1 \
  --modes plain+nocudnn,worker+bucket+merge+graphs+nodropout+loaders,worker+bucket+merge+graphs+nodropout+loaders2
has recipe_loaders && bench train_gpu_recipe_loaders 150 --lengths financial --seq-len 512 --pairs 6300 \
  --epochs 4 --repeats 1 --modes worker+bucket+graphs+nodropout+loaders,worker+bucket+merge+graphs+nodropout+loaders
has full_loaders && bench train_gpu_full256_loaders 150 --lengths full --seq-len 256 --pairs 2048 \
  --epochs 1 --repeats 1 --modes worker+merge+graphs,worker+merge+graphs+loaders,worker+merge+graphs+loaders2,worker+merge+graphs+loaders4
# train.pretokenize (on by default since session 18): the recipe tokenizing each batch (+tokenize, as every
# figure before it), pretokenized, and pretokenized with a loader, side by side
has pretok && bench train_gpu_recipe_pretok 200 --lengths financial --seq-len 512 --pairs 6300 \
  --epochs 4 --repeats 1 --modes worker+bucket+merge+graphs+nodropout+tokenize,worker+bucket+merge+graphs+nodropout,worker+bucket+merge+graphs+nodropout+loaders
# MFU against the per-device batch: the seed's 32 pairs leave an H100 mostly idle between kernels; 64 and 128
# pairs a step (more in-batch negatives, so a different loss) show how far the same code gets when it is fed
has mfu && bench train_gpu_mfu_batch 170 --lengths full --seq-len 256 --pairs 4096 --epochs 1 --repeats 1 \
  --batch-size 128 --modes worker+merge+graphs+loaders4,worker+merge+loaders4
has mfu && bench train_gpu_mfu_batch64 110 --lengths full --seq-len 256 --pairs 4096 --epochs 1 --repeats 1 \
  --batch-size 64 --modes worker+merge+graphs+loaders4
# train.unpad (on by default since session 19): random batches at the seed's lengths are 59% padding; eager
# steps padded (+padded, as every figure before it) and unpadded (variable-length flash attention), at batch 128
# where the padding's compute shows, beside the best graphed setting (graphs replay fixed shapes: padded)
has unpad && bench train_gpu_unpad 200 --lengths financial --seq-len 512 --pairs 6300 --epochs 1 --repeats 1 \
  --batch-size 128 --modes worker+merge+nodropout+padded,worker+merge+nodropout,worker+bucket+merge+graphs+nodropout
# where a graphed step's time goes at 256 tokens a text, past its one capture
has profile && { timeout 150 python3 benchmarks/train_step_profile.py --tokenizer "$DEV/tok" --lengths full \
  --seq-len 256 --pairs 2048 --steps 60 --profile-wait 30 --profile-mrlkit --set train.cuda_graphs=true \
  --set train.merge_columns=true --out "$OUT/train_step_profile.json" >"$OUT/train_step_profile.log" 2>&1;
  echo "== train_step_profile rc=$?"; grep -E "^(bare|trainer|phases|the trainer)" "$OUT/train_step_profile.log"; }
exit 0
