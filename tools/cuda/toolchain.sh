#!/usr/bin/env bash
# Assemble a build-only CUDA 13.0 toolkit (nvcc, headers, static runtime)
# from the NVIDIA wheels on PyPI, plus link stubs for the driver and math
# libraries, so `cargo build --features cuda` works on a machine without a
# GPU or a CUDA install. The real libraries come from the GPU machine's
# driver and CUDA runtime at run time.
#
# Usage: tools/cuda/toolchain.sh [ROOT]   (default ROOT: target/cuda-toolchain)
# Then:  source ROOT/env.sh
#
# nvcc stays at 13.0.x: the GPU machines' driver (580) is CUDA 13.0 and
# rejects PTX from a newer compiler.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(realpath -m "${1:-target/cuda-toolchain}")
CUDA=$ROOT/cuda
if [ -x "$CUDA/bin/nvcc" ] && [ -f "$ROOT/env.sh" ]; then
    echo "CUDA toolchain already in $ROOT"
    exit 0
fi
mkdir -p "$ROOT/wheels" "$CUDA"
echo "downloading the CUDA 13.0 compiler wheels (about 100 MB) ..."
python3 -m pip download --no-deps -q -d "$ROOT/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
unpack=$(mktemp -d)
for w in "$ROOT"/wheels/*.whl; do python3 -m zipfile -e "$w" "$unpack"; done
cp -a "$unpack"/nvidia/cu13/. "$CUDA"/
rm -rf "$unpack"
chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/* 2>/dev/null || true
ln -sfn lib "$CUDA/lib64"

# Link stubs: shared objects with the right sonames that export every
# function cudarc binds, so the linker is satisfied; at run time the real
# libraries of the same sonames are loaded instead.
cargo fetch -q
bindings=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src | sort -V | tail -1)
stub() { # library soname bindings-file symbol-prefix
    local c="$ROOT/stub-$1.c"
    grep -oP "^pub unsafe fn \K$4\w+" "$bindings/$3" | sort -u | sed 's/.*/void &(void) {}/' > "$c"
    gcc -shared -fPIC -o "$CUDA/lib/lib$1.so" -Wl,-soname,"$2" "$c"
}
stub cuda libcuda.so.1 driver/sys/mod.rs cu
stub cublas libcublas.so.13 cublas/sys/mod.rs cublas
stub cublasLt libcublasLt.so.13 cublaslt/sys/mod.rs cublasLt
stub curand libcurand.so.10 curand/sys/mod.rs curand
stub nvrtc libnvrtc.so.13 nvrtc/sys/mod.rs nvrtc
# candle-kernels links -lcudart: point it at the static runtime, so the
# binary does not need libcudart.so at run time.
echo "INPUT($CUDA/lib/libcudart_static.a -lrt -lpthread -ldl)" > "$CUDA/lib/libcudart.so"

cat > "$ROOT/env.sh" <<EOT
export CUDA_HOME=$CUDA
export PATH=$CUDA/bin:\$PATH
# H100 / H200 (sm_90); set CUDA_COMPUTE_CAP before sourcing for other cards.
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-2}
EOT
echo "CUDA toolchain ready in $ROOT (source $ROOT/env.sh)"
