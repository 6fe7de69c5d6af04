#!/usr/bin/env bash
# Prepare libtorch for omniad (idempotent, cached).
#
# libtorch comes from the PyPI wheel torch==2.13.0 (the version tch 0.26 is built for). Its CPU
# libraries also load libcudart and libcupti, so the two small NVIDIA wheels that torch itself pins
# are unpacked beside it, in the site-packages layout the wheel's RUNPATH expects
# ($ORIGIN/../../nvidia/<pkg>/lib). Nothing else of CUDA is needed for CPU use; for `--features cuda`
# run with OMNIAD_CUDA=1, which also unpacks cuBLAS, cuDNN & co.
#
# Result: <cache>/libtorch-2.13.0/torch/{lib,include}, linked into the repo as .libtorch, which
# .cargo/config.toml points LIBTORCH at. After this, plain `cargo build/test/run` work.
#
# Env: OMNIAD_CACHE (default ~/.cache/omniad), OMNIAD_CUDA=1 for the GPU libraries.
set -euo pipefail

TORCH_VERSION=2.13.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${OMNIAD_CACHE:-$HOME/.cache/omniad}
root=$cache/libtorch-$TORCH_VERSION
stamp=$root/.complete-v1

log() { echo "[setup] $*" >&2; }

py=$(command -v python3 || command -v python || true)
[ -n "$py" ] || { log "error: python3 (with pip) is needed to fetch the torch wheel"; exit 1; }

unpack() { # wheel, prefix...
  local whl=$1; shift
  "$py" - "$whl" "$root" "$@" <<'PY'
import sys, zipfile, os
whl, dest, prefixes = sys.argv[1], sys.argv[2], tuple(sys.argv[3:])
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefixes) or info.is_dir():
            continue
        out = os.path.join(dest, info.filename)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = out + ".part"
        with z.open(info) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(tmp, out)
PY
}

fetch() { # pip requirement(s) -> wheels in $cache/wheels
  mkdir -p "$cache/wheels"
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: \
    -d "$cache/wheels" "$@" >&2
}

if [ ! -f "$stamp" ]; then
  log "fetching torch==$TORCH_VERSION (about 530 MB, once) into $cache"
  rm -rf "$root"
  mkdir -p "$root"
  fetch "torch==$TORCH_VERSION" "nvidia-cuda-runtime==$CUDART_VERSION.*" "nvidia-cuda-cupti==$CUPTI_VERSION.*"
  log "unpacking libtorch"
  unpack "$(ls "$cache"/wheels/torch-$TORCH_VERSION-*.whl | head -n1)" torch/lib/ torch/include/ torch/share/
  unpack "$(ls "$cache"/wheels/nvidia_cuda_runtime-$CUDART_VERSION-*.whl | head -n1)" nvidia/
  unpack "$(ls "$cache"/wheels/nvidia_cuda_cupti-$CUPTI_VERSION-*.whl | head -n1)" nvidia/
  # The Python extension is not needed and pulls libpython.
  rm -f "$root/torch/lib/libtorch_python.so"
  # The wheel is no longer needed once unpacked.
  rm -f "$cache"/wheels/torch-$TORCH_VERSION-*.whl
  touch "$stamp"
fi

if [ "${OMNIAD_CUDA:-0}" = "1" ] && [ ! -f "$root/.cuda-complete-v1" ]; then
  log "fetching the CUDA runtime libraries torch==$TORCH_VERSION needs"
  mkdir -p "$cache/cuda-wheels"
  "$py" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    -d "$cache/cuda-wheels" \
    "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.0.3" \
    "nvidia-cudnn-cu13==9.20.0.48" "nvidia-cusparselt-cu13==0.8.1" "nvidia-nccl-cu13==2.29.7" \
    "nvidia-nvshmem-cu13==3.4.5" >&2
  for w in "$cache"/cuda-wheels/nvidia_*.whl; do unpack "$w" nvidia/; done
  touch "$root/.cuda-complete-v1"
fi

ln -sfn "$root" "$repo/.libtorch"
log "libtorch ready: .libtorch/torch ($(du -sh "$root" | cut -f1))"
