#!/usr/bin/env bash
# The GPU check of the forward passes, prepared on the CPU machine and run in one call on a lent GPU machine.
#
#   bash bench/gpu_check.sh prepare [REV]   here: .device/ gets the wheels the GPU machine lacks (Cog, pydantic),
#                                           multilingual-e5-small's tokenizer for the feed section, and REV (the
#                                           commit to compare with, default HEAD~1) as a plain tree
#   bash bench/gpu_check.sh run             there (the device tool's carry: [".device"]), in at most 6 minutes:
#                                           packed against padded parity through the loader and on full-size
#                                           configs, the gpu table padded, packed and graphed (CUDA graphs), and
#                                           the feed section at 384:12,1024:24 with E5_PACKING=on
#                                           E5_CUDA_GRAPHS=on against REV; a summary table last
#
# The GPU machines have Python 3.12 with torch, transformers and tokenizers, and reach no package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE_DIR=.device

prepare() {
  local rev="${1:-HEAD~1}"
  rm -rf "$DEVICE_DIR" && mkdir -p "$DEVICE_DIR/wheels" "$DEVICE_DIR/tokenizer" "$DEVICE_DIR/baseline"
  bash tests/install
  .venv/bin/python -m pip download --quiet --disable-pip-version-check --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEVICE_DIR/wheels" cog==0.23.1 pydantic==2.14.3 requests
  local source
  source=$(.venv/bin/python -c 'import sys; sys.path.insert(0, "bench"); from harness import converted_e5_small; print(converted_e5_small())')
  cp "$source"/tokenizer.json "$source"/tokenizer_config.json "$source"/config.json "$DEVICE_DIR/tokenizer/"
  git archive "$rev" | tar -x -C "$DEVICE_DIR/baseline"
  echo "$rev $(git rev-parse --short "$rev")" > "$DEVICE_DIR/baseline.rev"
  du -sh "$DEVICE_DIR"
}

run() {
  local out="${OUT:-/tmp/gpu-check}"
  mkdir -p "$out"
  python3 -m pip install --quiet --no-index --find-links "$DEVICE_DIR/wheels" cog==0.23.1 pydantic==2.14.3 requests
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
              "transformers", transformers.__version__, torch.cuda.get_device_name())'
  export HF_HUB_OFFLINE=1 E5_CACHE_DIR="$out/cache" OMP_WAIT_POLICY=PASSIVE
  timeout 170 python3 bench/bench.py --sections gpu --rounds 3 --out "$out/gpu.json" 2>&1 | tee "$out/gpu.log" \
    | grep -v "Loading weights\|Writing model\|weights have"
  timeout 170 python3 bench/bench.py --sections feed --feed-configs 384:12,1024:24 --rounds 3 \
    --feed-single-requests 1000 --feed-batch-requests 48 --feed-tokenizer "$DEVICE_DIR/tokenizer" \
    --baseline "$DEVICE_DIR/baseline" --feed-env E5_PACKING=on --feed-env E5_CUDA_GRAPHS=on --out "$out/feed.json" 2>&1 | tee "$out/feed.log" \
    | tail -40 || echo "feed: did not finish (see $out/feed.log)"
  python3 bench/gpu_summary.py "$out/gpu.json" "$out/feed.json" "$(cat "$DEVICE_DIR/baseline.rev" 2>/dev/null)"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) run ;;
  *) echo "usage: bash bench/gpu_check.sh prepare [REV] | run" >&2; exit 2 ;;
esac
