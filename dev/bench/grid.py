"""Mix Grid, measured (issue 25): one batched run for a 5 x 5 grid against 25 separately patched runs.

    python dev/bench/grid.py --out dev/bench/reference/DATE-grid.json              # on the GPU
    python dev/bench/grid.py --comfyui DIR --out grid.json                          # ComfyUI 0.3.75 source in DIR
    python dev/bench/grid.py --smoke --out smoke.json                               # CPU, a 2 x 2 grid, few steps

On the toy world's model and its two shipped adapters (dev/toy_world), the
mix prompt, one seed for every cell, KSampler's settings:
- separate: per cell, the nodes a user chains for one mix: Merge ΔR at the
  cell's weights -> Apply to Model -> KSampler (batch of one) -> VAE Decode;
- grid: the Mix Grid node (every cell in one sampling run, VAE Decode of
  the batch, the labelled picture);
- base batch: KSampler + VAE Decode of a batch of as many cells on the
  unpatched model, the floor the grid's cost is compared with.
Each is run once untimed first (model load, kernel choices), then timed
with the device synchronized. The cells' images are compared with the
separate runs' (max abs difference in [0, 1] and in 8-bit levels), beside
the noise floor of that comparison: the same separate run sampled in a
batch as large as the grid's (its first row: the same noise, other kernel
shapes), against the batch of one. In fp16 the two differ by rounding
alone, which a 25-step sampler can grow, most at weights past 1.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile

import torch

DEV = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, DEV)

from bench.common import timed  # noqa: E402
from toy_world import demo_assets, pipeline, world  # noqa: E402

WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)
SEED = 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", help="ComfyUI's source folder (default: the dev host's .comfyui/)")
    parser.add_argument("--out", required=True, help="JSON file for the numbers")
    parser.add_argument("--picture", help="PNG file for the grid's picture")
    parser.add_argument("--steps", type=int, default=pipeline.SAMPLER["steps"])
    parser.add_argument("--smoke", action="store_true", help="CPU-sized: a 2 x 2 grid, 4 steps")
    parser.add_argument("--fp32", action="store_true", help="run the model in float32 (ComfyUI's --force-fp32): the batch-size rounding noise of fp16 out")
    args = parser.parse_args()
    weights = WEIGHTS[:2] if args.smoke else WEIGHTS
    steps = 4 if args.smoke else args.steps

    from devkit import host

    if args.fp32:  # before model_management is imported: it reads the flag once
        sys.path.insert(0, os.path.abspath(args.comfyui or host.COMFYUI_DIR))
        import comfy.cli_args

        comfy.cli_args.args.force_fp32 = True
    host.import_comfy(args.comfyui, cpu=not torch.cuda.is_available())
    host.import_pack(entry_point=False)  # the nodes without the server's routes (no aiohttp needed on a bare GPU machine)
    import comfy.model_management
    import nodes

    from comfyui_qrlora.nodes.grid import QRLoRAGrid
    from comfyui_qrlora.nodes.loader import QRLoRALoader

    base = tempfile.mkdtemp(prefix="grid-bench-")
    demo_assets.build(base)
    pipeline.use_folders(os.path.join(base, "models"), os.path.join(base, "output"))
    device = comfy.model_management.get_torch_device()
    model, clip, vae = pipeline.load_models()
    content = pipeline.node(QRLoRALoader.execute, lora_name=demo_assets.CONTENT)[0]
    style = pipeline.node(QRLoRALoader.execute, lora_name=demo_assets.STYLE)[0]
    positive, negative = pipeline.encode_text(clip, pipeline.MIX_PROMPT), pipeline.encode_text(clip, "")
    settings = {**pipeline.SAMPLER, "steps": steps}
    sampler = (SEED, settings["steps"], settings["cfg"], settings["sampler_name"], settings["scheduler"])
    one = pipeline.node(nodes.EmptyLatentImage().generate, world.SIZE, world.SIZE, 1)[0]
    cells = [(a, b) for a in weights for b in weights]

    def separate_run(a, b, latent=one):
        """One cell as a user chains it; in a larger batch (`latent`), its row 0, which has the batch of one's noise."""
        patched = pipeline.mix_qrlora(model, content, style, a, b)
        samples = pipeline.node(nodes.KSampler().sample, patched, *sampler, positive, negative, latent, denoise=1.0)[0]
        return pipeline.node(nodes.VAEDecode().decode, vae, {"samples": samples["samples"][:1]})[0]

    def separate():
        return torch.cat([separate_run(a, b) for a, b in cells])

    batch = pipeline.node(nodes.EmptyLatentImage().generate, world.SIZE, world.SIZE, len(cells))[0]

    def grid():
        text = ", ".join(f"{w:g}" for w in weights)
        return pipeline.node(QRLoRAGrid.execute, model=model, content=content, style=style, content_weights=text, style_weights=text,
                             positive=positive, negative=negative, latent_image=one, vae=vae, seed=SEED, steps=settings["steps"],
                             cfg=settings["cfg"], sampler_name=settings["sampler_name"], scheduler=settings["scheduler"], denoise=1.0)

    def base_batch():
        samples = pipeline.node(nodes.KSampler().sample, model, *sampler, positive, negative, batch, denoise=1.0)[0]
        return pipeline.node(nodes.VAEDecode().decode, vae, samples)[0]

    separate_run(*cells[-1]), grid(), base_batch()  # untimed: loads, kernel choices
    (picture, images), grid_s = timed(device, grid)
    alone, separate_s = timed(device, separate)
    _, base_s = timed(device, base_batch)

    diff = (images.float().cpu() - alone.float().cpu()).abs().amax(dim=(1, 2, 3))
    levels = ((images.clamp(0, 1) * 255).round() - (alone.clamp(0, 1) * 255).round()).abs().amax(dim=(1, 2, 3))
    between = (alone[1:].float() - alone[:1].float()).abs().amax(dim=(1, 2, 3))
    batched = torch.cat([separate_run(a, b, batch) for a, b in cells])
    floor = (batched.float().cpu() - alone.float().cpu()).abs().amax(dim=(1, 2, 3))
    result = {
        "what": f"{len(weights)} x {len(weights)} Mix Grid vs {len(cells)} separate Merge ΔR -> Apply -> KSampler -> VAE Decode runs",
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "model_dtype": str(model.model.get_dtype()),
        "model": f"toy world SD1.5-architecture UNet at {world.SIZE} px ({demo_assets.UNET}), adapters {demo_assets.CONTENT} + {demo_assets.STYLE}",
        "sampler": {**settings, "seed": SEED},
        "weights": list(weights),
        "grid_seconds": grid_s,
        "separate_seconds": separate_s,
        "speedup": separate_s / grid_s,
        "base_batch_seconds": base_s,
        "grid_over_base_batch": grid_s / base_s,
        "max_abs_diff": float(diff.max()),
        "max_abs_diff_8bit_levels": int(levels.max()),
        "max_abs_diff_per_cell": [float(d) for d in diff],
        "smallest_difference_between_cells_and_cell_0": float(between.min()),
        "noise_floor": "per cell: the separate run sampled in a batch of the grid's size (row 0) against the batch of one",
        "noise_floor_per_cell": [float(d) for d in floor],
        "max_noise_floor": float(floor.max()),
        "cells_within_max_noise_floor": int((diff <= floor.max()).sum()),
        "goal": "speedup >= 5, cells the separate runs' images within sampling noise",
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if args.picture:
        from PIL import Image

        Image.fromarray((picture[0].clamp(0, 1) * 255).round().byte().cpu().numpy()).save(args.picture)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_per_cell")}, indent=1))


if __name__ == "__main__":
    main()
