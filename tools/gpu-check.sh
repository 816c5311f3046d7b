#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU, from the repository root:
#   tools/gpu-check.sh [BINARY] [RESULTS_DIR]
# BINARY defaults to target/cuda/release/clip2gan (tools/cuda/build.sh);
# RESULTS_DIR to gpu-results. It finds the CUDA libraries, runs the
# generator parity check on the GPU, then the generator benchmark at batch
# 1, 8, 32 and 128 (1024 px) and the engine benchmark, writing one JSON file
# per step. Weights: models/ (fetched on first use, or carried along).
set -uo pipefail
BIN=${1:-target/cuda/release/clip2gan}
OUT=${2:-gpu-results}
mkdir -p "$OUT"
# Carried in by tools/gpu-pack.sh (the GPU machine has no network).
if [ -f .gpu/models.tar.xz ] && [ ! -d models/mobilestylegan-ffhq ]; then tar -xJf .gpu/models.tar.xz; fi
if [ -f .gpu/clip2gan.xz ] && [ ! -x .gpu/clip2gan ]; then xz -dk .gpu/clip2gan.xz && chmod +x .gpu/clip2gan; fi
log() { echo "[gpu-check] $*" | tee -a "$OUT/log.txt"; }

# libcublas/libcublasLt (13) and libcurand (10): from a CUDA install or from
# the nvidia-* Python wheels that PyTorch brings.
dirs=$(find / \( -name 'libcublas.so.13*' -o -name 'libcurand.so.10*' \) -not -path '*/proc/*' 2>/dev/null \
       | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:-}"
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/log.txt"

export CLIP2GAN_DEVICE=cuda:0
step() { # name, then the command
    local name=$1; shift
    log "$name: $*"
    if "$@" > "$OUT/$name.json" 2>> "$OUT/log.txt"; then log "$name: ok"; else log "$name: FAILED ($?)"; fi
    cat "$OUT/$name.json"
}
step parity "$BIN" parity
for b in 1 8 32 128; do
    step "generator-batch$b" "$BIN" bench generator --batch "$b" --iters 5
done
step engine-c16 "$BIN" bench engine --concurrency 16 --jobs-per-client 4 --max-batch 32 --rounds 1
CLIP2GAN_DEVICE=cpu step parity-cpu "$BIN" parity
log "done; results in $OUT"
