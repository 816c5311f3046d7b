#!/usr/bin/env bash
# Build clip2gan with CUDA on a machine without a CUDA install:
#   tools/cuda/build.sh            -> target/cuda/release/clip2gan
# The device is chosen at run time (`device = "auto"` picks the GPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
tools/cuda/toolchain.sh
# shellcheck disable=SC1091
source target/cuda-toolchain/env.sh
cargo build --release --locked --features cuda --target-dir target/cuda "$@"
ls -la target/cuda/release/clip2gan
