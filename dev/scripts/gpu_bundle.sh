#!/usr/bin/env bash
# Packs what a bare GPU machine needs to run the benches (dev/bench/*.py --comfyui /tmp/w/comfyui): one that has
# PyTorch and most of ComfyUI's requirements but no ComfyUI, no PyAV and no package index. Writes, both git-ignored:
#   .gpu/comfyui.tgz  ComfyUI's source from .comfyui (make setup), without its tests, API nodes and large tokenizers
#   .gpu/stub/av      a stand-in for PyAV: ComfyUI imports it at start; the benches never run a video node
#   .gpu/run.sh       on the GPU machine: installs the wheels, unpacks ComfyUI, starts CUDA's MPS daemon, runs "$@"
#   .whl/             the pure-Python wheels missing there (torchsde, trampoline), at the versions .venv holds
# Then, from the repository root on the GPU machine:  bash .gpu/run.sh python3 dev/bench/mixing.py --comfyui /tmp/w/comfyui ...
# (The tree and these pass the 64 MiB a device call carries: dev/scripts/gpu_tree.sh aside before the call, back after.)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f .comfyui/main.py ] || { echo "ComfyUI's source is not in .comfyui: run make setup first" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu/stub/av/container .gpu/stub/av/subtitles .whl
tar --exclude='./tests' --exclude='./tests-unit' --exclude='./comfy_api_nodes' --exclude='__pycache__' --exclude='./models' \
    --exclude='./.git*' --exclude='./comfy/text_encoders/*_tokenizer' -C .comfyui -cJf .gpu/comfyui.tgz .
cat > .gpu/stub/av/__init__.py <<'PY'
"""A stand-in for PyAV on the GPU machine: every name is a class that accepts anything (no video node runs there)."""


class _Anything:
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return _Anything()


def __getattr__(name):
    return _Anything
PY
for module in container/__init__.py subtitles/__init__.py subtitles/stream.py; do cp .gpu/stub/av/__init__.py ".gpu/stub/av/$module"; done
cat > .gpu/run.sh <<'SH'
#!/usr/bin/env bash
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/.gpu/stub PYTHONUNBUFFERED=1
mkdir -p /tmp/w/comfyui && [ -f /tmp/w/comfyui/main.py ] || tar -xJf .gpu/comfyui.tgz -C /tmp/w/comfyui
# CUDA MPS: the bench's worker processes share the GPU at once instead of in time slices (about 2.5x on an H100).
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
mkdir -p /tmp/mps /tmp/mpslog
pgrep -f nvidia-cuda-mps-control >/dev/null || nvidia-cuda-mps-control -d
"$@"
SH
versions=$(.venv/bin/python -m pip list --format=freeze 2>/dev/null | grep -iE '^(torchsde|trampoline)==')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl $versions
ls -la .gpu .whl
