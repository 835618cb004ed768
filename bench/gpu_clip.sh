#!/usr/bin/env bash
# The CLIP worker (torch CUDA path) end to end against the model alone, fp32 and fp16, on a
# GPU machine, in under 5 minutes (docs/benchmarks.md, "Worker overlap"). From the repo root:
#     bash bench/gpu_clip.sh                # cuda, ViT-L-14, 1000 PNGs of 512 px
#     bash bench/gpu_clip.sh --device cpu --model ViT-B-32 --images 48 --batch 8   # a dry run
# Needs python3 with torch, numpy, Pillow, opencv; open_clip_torch, ftfy and wcwidth are
# installed from .whl/ (py3-none-any wheels carried beside the tree) when not importable.
# Source faces: .gpudata/*.jpg (a few face JPEGs), else ../shared/testdata/faces.
# Figures: printed, and written to $OUT/gpu_clip.txt (or ./gpu_clip.txt without $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! python3 -c "import open_clip, ftfy" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
out="${OUT:-.}/gpu_clip.txt"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader 2>/dev/null || true
timeout 290 python3 bench/bench_gpu_clip.py --out "$out" "$@"
