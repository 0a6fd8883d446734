"""`make demo` and `make serve`: the pack on the real ComfyUI host, on the CPU.

demo: puts the toy world's trained model (toy_world/: an SD1.5-architecture
UNet and a TAESD autoencoder trained from scratch, shipped, and a CLIP-L
text encoder written from its formula) and its two adapters trained by
Train QR-LoRA (a heart "<c>" and a checkerboard "<s>", never seen by the
base model) into a ComfyUI base directory, starts ComfyUI with the pack on
127.0.0.1:PORT, runs the mixing workflow (example_workflows/Mix-content-and-style-toy-model.json, turned
into its API form: "a <c> shape in <s> style") through /prompt, reports the
image it wrote with its scores against the world (the goal: a checkered heart)
and leaves the server running. The URL it
prints opens the page on that workflow (the frontend's ?template= loader
reads it from the pack's example_workflows/).
serve: only starts the server, in the foreground.
"""

import argparse
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devkit import workflow  # noqa: E402
from toy_world import demo_assets  # noqa: E402
from devkit.host import COMFYUI_DIR, PACK_ROOT  # noqa: E402
from devkit.server import Client, ComfyServer, make_base_directory  # noqa: E402

def install_workflows(base: str) -> None:
    """Put the example workflows into the user's Workflows sidebar."""
    target = os.path.join(base, "user", "default", "workflows")
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(demo_assets.WORKFLOWS):
        if name.endswith(".json"):
            shutil.copy(os.path.join(demo_assets.WORKFLOWS, name), os.path.join(target, name))


def world_check(path: str) -> str:
    """What the image is, scored against the toy world's definition (toy_world/scores.py)."""
    import numpy as np
    from PIL import Image

    from toy_world import scores, world

    image = np.asarray(Image.open(path).convert("RGB"))
    if image.shape[:2] != (world.SIZE, world.SIZE):
        return f"(the image is {image.shape[1]}x{image.shape[0]}, not the world's {world.SIZE}x{world.SIZE}: not scored)"
    s = scores.score(image, world.HELD_OUT_SHAPE, world.HELD_OUT_STYLE, world.CHECKER_COLOURS)
    verdict = "a checkered heart" if s["success"] else "NOT a checkered heart"
    return (f"against the world: heart IoU {s['shape_iou']:.2f} (closest shape: {s['best_shape']}), "
            f"checkerboard agreement {s['pattern']:.2f} (closest style: {s['best_style']}) -> {verdict}")


def running_server(port: int) -> bool:
    try:
        return "QRLoRAApply" in Client(f"http://127.0.0.1:{port}").object_info("QRLoRAApply")
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--base", default=os.path.join(PACK_ROOT, ".run", "base"))
    parser.add_argument("--serve-only", action="store_true")
    args = parser.parse_args()

    base = make_base_directory(args.base, PACK_ROOT)
    install_workflows(base)
    server = ComfyServer(base, port=args.port)
    if args.serve_only:
        print(f"ComfyUI with comfyui-qrlora: http://127.0.0.1:{args.port}  (base directory {base}; Ctrl-C stops it)")
        os.chdir(COMFYUI_DIR)
        os.execv(sys.executable, [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(args.port), "--base-directory", base, "--disable-auto-launch"])

    started = time.time()
    print("[demo] putting the toy world's model and adapters in place (first run: writes the 247 MB text encoder) ...")
    demo_assets.build(base)
    if running_server(args.port):
        print(f"[demo] reusing the ComfyUI server already on port {args.port}")
    else:
        print(f"[demo] starting ComfyUI on 127.0.0.1:{args.port} (log: {server.log_path})")
        server.start(detach=True)
    client = Client(server.url)
    print("[demo] mixing the heart (content) and checkerboard (style) adapters: 'a <c> shape in <s> style' ...")
    prompt = workflow.to_api(workflow.load(demo_assets.MIX_WORKFLOW), client.object_info())
    entry = client.run(prompt, timeout=600)
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    if not images:
        print("[demo] the workflow ran but saved no image", file=sys.stderr)
        return 1
    for img in images:
        path = os.path.join(base, "output", img["subfolder"], img["filename"])
        print(f"[demo] image written: {path}")
        print(f"[demo] {world_check(path)}")
    print(f"[demo] done in {time.time() - started:.0f} s.")
    print()
    print(f"  ComfyUI with comfyui-qrlora is running. Open the mixing workflow, ready to run:")
    print(f"    {demo_assets.page_url(server.url)}")
    print(f"  (the file: {demo_assets.MIX_WORKFLOW}; every example workflow is in the page's Templates > Extensions")
    print("  and Workflows sidebar). Stop the server with: make stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
