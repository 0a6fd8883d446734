"""Redraw the help pages' pictures (web/docs/images) from the toy world's shipped adapters and workflow cards.

    .venv/bin/python dev/scripts/help_images.py

grid.jpg: the Mix Grid node itself draws it, in-process (two minutes on 2
CPU cores): the shipped content and style adapters at weights 0-2 each, the
mix prompt, the workflows' sampler seed. The others are workflows' cards
(build_workflows.HELP_PICTURES), which `make workflows` writes with each
card; this copies the cards as they are. Rerun it when the base model or
the shipped adapters change (`make world-adapters`).
"""

import os
import shutil
import sys
import tempfile

DEV_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, DEV_ROOT)
sys.path.insert(0, os.path.join(DEV_ROOT, "scripts"))

from toy_world import model_files, pipeline, world  # noqa: E402

WEIGHTS = "0, 0.5, 1, 1.5, 2"
WIDTH = 320  # the help panel's picture width


def draw_grid(out: str) -> None:
    import nodes
    from PIL import Image

    from build_workflows import DEMO_SEED

    from comfyui_qrlora.nodes.grid import QRLoRAGrid
    from comfyui_qrlora.qrlora_core.formats import load_adapter

    model, clip, vae = pipeline.load_models()
    content, style = (load_adapter(os.path.join(model_files.WEIGHTS, os.path.basename(name)))
                      for name in (model_files.CONTENT_ADAPTER, model_files.STYLE_ADAPTER))
    latent = pipeline.node(nodes.EmptyLatentImage().generate, world.SIZE, world.SIZE, 1)[0]
    settings = pipeline.SAMPLER
    picture = pipeline.node(QRLoRAGrid.execute, model=model, content=content, style=style, content_weights=WEIGHTS,
                            style_weights=WEIGHTS, positive=pipeline.encode_text(clip, pipeline.MIX_PROMPT),
                            negative=pipeline.encode_text(clip, ""), latent_image=latent, vae=vae, seed=DEMO_SEED,
                            steps=settings["steps"], cfg=settings["cfg"], sampler_name=settings["sampler_name"],
                            scheduler=settings["scheduler"], denoise=1.0)[0]
    image = Image.fromarray((picture[0].clamp(0, 1) * 255).round().byte().cpu().numpy())
    image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
    image.save(out, quality=82, optimize=True)  # the help panel fetches it: under 32 kB (tests/integration/test_help_pages.py)
    print(f"image written: {out}")


def main() -> int:
    import torch

    pipeline.import_host(None, cpu=not torch.cuda.is_available())
    work = tempfile.mkdtemp(prefix="help_images_")
    try:
        models = os.path.join(work, "models")
        pipeline.install_models(models)
        pipeline.use_folders(models, os.path.join(work, "output"))
        import build_workflows

        for name in build_workflows.HELP_PICTURES:
            build_workflows.write_help_picture(name)
        draw_grid(os.path.join(build_workflows.HELP_IMAGES, "grid.jpg"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
