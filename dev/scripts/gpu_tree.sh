#!/usr/bin/env bash
# A device call carries the working tree and .gpu/.whl, 64 MiB at most. The tree passed that when the demo's adapters
# grew to rank 32 (session 20), so before a call `aside` moves what no bench reads (the demo's two adapters, 6 MB) into
# the git-ignored .aside/, and `back` returns them after it.
set -euo pipefail
cd "$(dirname "$0")/../.."
PATHS=(dev/toy_world/weights/heart_content.safetensors dev/toy_world/weights/checker_style.safetensors)
case "${1:-}" in
  aside) for p in "${PATHS[@]}"; do mkdir -p ".aside/$(dirname "$p")"; mv "$p" ".aside/$p"; done ;;
  back) for p in "${PATHS[@]}"; do [ -e ".aside/$p" ] && mv ".aside/$p" "$p"; done; rm -rf .aside ;;
  *) echo "usage: $0 aside|back" >&2; exit 2 ;;
esac
