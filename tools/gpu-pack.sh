#!/usr/bin/env bash
# Pack what the GPU check needs into .gpu/ (git-ignored) for a borrowed GPU
# machine that cannot download anything: the stripped CUDA binary and the
# converted weights, xz-compressed to fit a 64 MiB transfer.
#   tools/cuda/build.sh && tools/gpu-pack.sh
# On the GPU machine: tools/gpu-check.sh .gpu/clip2gan "$OUT"
# (gpu-check.sh unpacks .gpu/models.tar.xz into models/ when present).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
strip -o .gpu/clip2gan target/cuda/release/clip2gan
tar -C . -cJf .gpu/models.tar.xz models/mobilestylegan-ffhq
xz -T2 -9 -k -f .gpu/clip2gan
rm .gpu/clip2gan
du -ch .gpu/*
