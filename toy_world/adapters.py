"""Train the world's two shipped adapters with the pack's own QRLoRATrain: `make world-adapters`.

content: a few hearts in base styles and colours, each captioned "a <c> shape";
style:   a few base shapes in the held-out checkerboard, each captioned with
         its real shape, "a circle in <s> style".
Both on the shipped base model, at one rank, so they share the basis Q and
mix as one ΔR sum. The files land in toy_world/weights/ (the demo and the
workflows use them). Rerun this after the trainer changes: one command.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from toy_world import model_files, pipeline  # noqa: E402

# One recipe for the shipped adapters and the CI test (which trains fewer steps).
RECIPE = {"rank": 8, "learning_rate": 2e-3, "batch_size": 1, "grad_accumulation": 1, "training_dtype": "fp32", "gradient_checkpointing": False}
IMAGES = 4
STEPS = 300
SEEDS = {"content": 11, "style": 12}


def train_pair(model, clip, vae, steps: int, prefix: str, **overrides):
    """(content adapter, its losses), (style adapter, its losses), with the shipped recipe."""
    settings = {**RECIPE, "steps": steps, **overrides}
    items, captions = pipeline.content_set(SEEDS["content"], IMAGES)
    content = pipeline.train_qrlora(model, clip, vae, items, captions, f"{prefix}/content", pipeline.CONTENT_TRIGGER,
                                    seed=SEEDS["content"], **settings)
    items, captions = pipeline.style_set(SEEDS["style"], IMAGES)
    style = pipeline.train_qrlora(model, clip, vae, items, captions, f"{prefix}/style", f"{pipeline.STYLE_TRIGGER} style",
                                  seed=SEEDS["style"], **settings)
    return content, style


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--out", default=model_files.WEIGHTS, help="where the two adapter files go")
    parser.add_argument("--comfyui", help="ComfyUI's source (default: the pack's .comfyui)")
    args = parser.parse_args()
    import torch

    pipeline.import_host(args.comfyui, cpu=not torch.cuda.is_available())
    work = tempfile.mkdtemp(prefix="toy_world_adapters_")
    try:
        pipeline.install_models(os.path.join(work, "models"))
        pipeline.use_folders(os.path.join(work, "models"), os.path.join(work, "output"))
        model, clip, vae = pipeline.load_models()
        started = time.time()
        (content, c_losses), (style, s_losses) = train_pair(model, clip, vae, args.steps, "toy_world")
        for adapter, losses, name in ((content, c_losses, model_files.CONTENT_ADAPTER), (style, s_losses, model_files.STYLE_ADAPTER)):
            source = os.path.join(work, "models", "loras", adapter.source)
            target = os.path.join(args.out, os.path.basename(name))
            shutil.copyfile(source, target)
            print(f"{target}: {args.steps} steps, loss {sum(losses[:10]) / 10:.4f} (first 10) -> {sum(losses[-10:]) / 10:.4f} (last 10)")
        print(f"trained both in {time.time() - started:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
