"""A caption per image against one caption for all: what a training step costs each way.

    python dev/bench/captions.py --out dev/bench/reference/DATE-captions.json      # the GPU, or the CPU where there is none
    python dev/bench/captions.py --comfyui DIR --out captions.json                  # ComfyUI 0.3.75 source in DIR
    python dev/bench/captions.py --smoke --out smoke.json                           # CPU, 2 steps each

Captioned as the stock dataset nodes caption (one text per image), a
micro-batch holds several captions. On the toy world's base model with its
recipe (batch 8, fp32, role content) and 16 images of its content set,
TrainingSession (the object Train QR-LoRA trains with) runs optimizer steps
with each image's own caption, then with the first caption for all of them
(the anchor: one forward per step on any path), in alternating rounds, each
session after one untimed step. Reported: the median step time of each,
their ratio, and how many forwards of the model a step ran.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile

import torch

DEV = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, DEV)

from bench.common import timed  # noqa: E402
from toy_world import adapters, demo_assets, pipeline, world  # noqa: E402

IMAGES = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", help="ComfyUI's source folder (default: the dev host's .comfyui/)")
    parser.add_argument("--out", required=True, help="JSON file for the numbers")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and captioning")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="CPU-sized: 2 steps, one round")
    args = parser.parse_args()
    steps, rounds = (2, 1) if args.smoke else (args.steps, args.rounds)

    from devkit import host

    host.import_comfy(args.comfyui, cpu=not torch.cuda.is_available())
    host.import_pack(entry_point=False)
    import comfy.model_management

    from comfyui_qrlora.integration.training.session import TrainingSession
    from comfyui_qrlora.qrlora_core.training import TrainConfig

    base = tempfile.mkdtemp(prefix="captions-bench-")
    demo_assets.build(base)
    pipeline.use_folders(os.path.join(base, "models"), os.path.join(base, "output"))
    device = comfy.model_management.get_torch_device()
    model, clip, vae = pipeline.load_models()
    items, captions = pipeline.content_set(adapters.SEEDS["content"], IMAGES)
    latents = [pipeline.encode_images(vae, [world.render(i) for i in items])]
    positives = {"per image": [pipeline.encode_text(clip, c) for c in captions], "one for all": [pipeline.encode_text(clip, captions[0])]}
    config = TrainConfig(**adapters.RECIPE, **adapters.TARGETS["content"], steps=steps + 1, seed=adapters.SEEDS["content"])

    times = {name: [] for name in positives}
    forwards = {}
    for _ in range(rounds):
        for name, positive in positives.items():
            session = TrainingSession(model, config, latents, positive)
            with session:
                calls = []
                hook = session.patcher.model.diffusion_model.register_forward_pre_hook(lambda module, inputs: calls.append(1))
                try:
                    session.loop.step(0, session.micro_loss)  # untimed: optimizer state, kernel choices
                    calls.clear()
                    for i in range(steps):
                        times[name].append(timed(device, session.loop.step, i + 1, session.micro_loss)[1])
                    forwards[name] = len(calls) / steps
                finally:
                    hook.remove()
            del session
    result = {
        "what": f"TrainingSession step, toy world recipe (batch {config.batch_size}, {config.training_dtype}, role content), "
                f"{IMAGES} images: a caption per image vs one caption for all",
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "steps": steps,
        "rounds": rounds,
        "step_seconds": times,
        "median_step_seconds": {name: statistics.median(t) for name, t in times.items()},
        "forwards_per_step": forwards,
    }
    result["per_image_over_one_for_all"] = result["median_step_seconds"]["per image"] / result["median_step_seconds"]["one for all"]
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("device", "median_step_seconds", "per_image_over_one_for_all", "forwards_per_step")}, indent=1))


if __name__ == "__main__":
    main()
