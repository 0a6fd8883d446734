"""`make demo` and `make serve`: the pack on the real ComfyUI host, on the CPU.

demo: puts the toy world's trained model (toy_world/: an SD1.5-architecture
UNet and a TAESD autoencoder trained from scratch, shipped, and a CLIP-L
text encoder written from its formula) and its two adapters trained by
Train QR-LoRA (a heart "<c>" and a checkerboard "<s>", never seen by the
base model) into a ComfyUI base directory, starts ComfyUI with the pack on
127.0.0.1:PORT, runs the mixing workflow (example_workflows/Mix-content-and-style-toy-model.json, turned
into its API form: "a <c> shape in <s> style") through /prompt, reports the
image it wrote with its scores against the world (the goal: a checkered heart),
runs the same workflow with each adapter alone, writes a grid of the three
(content alone, the mix, style alone) with their scores, and leaves the
server running. The URL it
prints opens the page on that workflow (the frontend's ?template= loader
reads it from the pack's example_workflows/).
serve: only starts the server, in the foreground.
"""

import argparse
import copy
import json
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


def world_scores(path: str) -> dict | None:
    """The image scored against the toy world's definition (toy_world/scores.py), None if it is not the world's size."""
    import numpy as np
    from PIL import Image

    from toy_world import scores, world

    image = np.asarray(Image.open(path).convert("RGB"))
    if image.shape[:2] != (world.SIZE, world.SIZE):
        return None
    return scores.score(image, world.HELD_OUT_SHAPE, world.HELD_OUT_STYLE, world.CHECKER_COLOURS)


def world_check(s: dict | None) -> str:
    if s is None:
        return "(the image is not the world's size: not scored)"
    verdict = "a checkered heart" if s["success"] else "NOT a checkered heart"
    return (f"against the world: heart IoU {s['shape_iou']:.2f} (closest shape: {s['best_shape']}), "
            f"checkerboard agreement {s['pattern']:.2f} (closest style: {s['best_style']}) -> {verdict}")


def alone(prompt: dict, keep: str, label: str) -> dict:
    """The mixing workflow's API prompt with only the adapter file `keep` left in the mix (the other at weight 0 or
    switched off, in Merge ΔR or Mix QR-LoRAs alike), saving under its own name."""
    out = copy.deepcopy(prompt)
    for node in out.values():
        inputs = node["inputs"]
        if node["class_type"] == "QRLoRAMixer":
            inputs["rows"] = json.dumps([{**row, "on": row.get("on", True) and row["lora"] == keep} for row in json.loads(inputs["rows"])])
        elif node["class_type"] == "QRLoRAMerge":
            for name, source in inputs.items():
                if name.startswith("qr_lora_") and out[source[0]]["inputs"].get("lora_name") != keep:
                    inputs["weight_" + name[len("qr_lora_"):]] = 0.0
        elif node["class_type"] == "SaveImage":
            inputs["filename_prefix"] += "_" + label.replace(" ", "_")
    return out


def saved_images(base: str, entry: dict) -> list[str]:
    return [os.path.join(base, "output", img["subfolder"], img["filename"]) for out in entry["outputs"].values() for img in out.get("images", [])]


def grid(panels: list[tuple[str, str, dict | None]], path: str) -> str:
    """content alone | the mix | style alone, each image enlarged 2x with its label and scores under it."""
    from PIL import Image, ImageDraw

    scale, pad, text_h = 2, 8, 58
    images = [Image.open(p).convert("RGB") for _, p, _ in panels]
    w, h = images[0].width * scale, images[0].height * scale
    sheet = Image.new("RGB", (len(panels) * (w + pad) + pad, h + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, ((label, _, s), image) in enumerate(zip(panels, images)):
        x = pad + i * (w + pad)
        sheet.paste(image.resize((w, h), Image.NEAREST), (x, pad))
        lines = [label] if s is None else [
            label, f"heart IoU {s['shape_iou']:.2f} ({s['best_shape']})", f"checker {s['pattern']:.2f} ({s['best_style']})",
            "checkered heart" if s["success"] else "not a checkered heart"]
        for j, line in enumerate(lines):
            draw.text((x, pad + h + 4 + 13 * j), line, fill="black")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sheet.save(path)
    return path


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
    images = saved_images(base, client.run(prompt, timeout=600))
    if not images:
        print("[demo] the workflow ran but saved no image", file=sys.stderr)
        return 1
    for path in images:
        print(f"[demo] image written: {path}")
        print(f"[demo] {world_check(world_scores(path))}")
    print("[demo] the same workflow with each adapter alone ...")
    panels = [("the mix", images[0], world_scores(images[0]))]
    for label, keep in (("content alone", demo_assets.CONTENT), ("style alone", demo_assets.STYLE)):
        path = saved_images(base, client.run(alone(prompt, keep, label), timeout=600))[0]
        panels.append((label, path, world_scores(path)))
        print(f"[demo] {label}: {world_check(panels[-1][2])}")
    sheet = grid([panels[1], panels[0], panels[2]], os.path.join(base, "output", "qrlora_demo", "grid.png"))
    print(f"[demo] grid written (content alone, the mix, style alone): {sheet}")
    print(f"[demo] done in {time.time() - started:.0f} s.")
    print()
    print(f"  ComfyUI with comfyui-qrlora is running. Open the mixing workflow, ready to run:")
    print(f"    {demo_assets.page_url(server.url)}")
    print(f"  (the file: {demo_assets.MIX_WORKFLOW}; every example workflow is in the page's Templates > Extensions")
    print("  and Workflows sidebar). Stop the server with: make stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
