"""Train the world's two shipped adapters with the pack's own QRLoRATrain: `make world-adapters`.

content: hearts in base styles and colours, captioned with their fill and
         '<c> shape' for the shape ('a red and blue <c> shape in
         horizontal stripes style'); role content (the down and middle blocks).
style:   base shapes in the held-out checkerboard, each captioned with its
         real shape, 'a circle in <s> style'; role style (every block).
Both on the shipped base model, at one rank, so they share the basis Q and
mix as one ΔR sum. The files land in toy_world/weights/ (the demo and the
workflows use them). Rerun this after the trainer changes: one command.
Training at this learning rate is not smooth: the mix's scores swing
between checkpoints 25 steps apart (docs/toy-world.md, Disentanglement on the toy
world), so --check scores every --checkpoint-every steps.
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

# One recipe for the shipped adapters, the CI test and the benchmark. Rank 32 at 2e-3 since session 20 (rank 8 at 5e-3
# before): the tuning pairs' pick (route rank_32_2e-3, 27 of 96 against 25), held out 50% (384 of 768, 6 training
# seeds) against the rank-8 recipe's 27-36% (docs/mixing.md).
RECIPE = {"rank": 32, "learning_rate": 2e-3, "batch_size": 8, "grad_accumulation": 1, "training_dtype": "fp32", "gradient_checkpointing": False}
IMAGES = 16
# 400 steps: the tuning pairs' pick over 100 and 200 (3 training seeds; 12 of 48 mixes against 3 and 4, the held-out
# pairs 123 of 384 against 32 at 100; dev/bench/reference/2026-12-06-rich-world-steps-tuning.json.xz, docs/mixing.md).
STEPS = 400
SEEDS = {"content": 11, "style": 12}
# The roles (qrlora_core/training/roles.py, docs/roles.md) pick the blocks: on this SD1.5-architecture UNet the content
# adapter trains the down and middle blocks only (where the layout is drawn), the style adapter every block; trained on
# every block, the content adapter's ΔR pulled the mix towards its own images' fills.
TARGETS = {role: {"role": role, "target_preset": "attention + MLP (paper)", "target_pattern": ""} for role in ("content", "style")}


def train_pair(model, clip, vae, steps: int, prefix: str, **overrides):
    """(content adapter, its losses), (style adapter, its losses), with the shipped recipe."""
    settings = {**RECIPE, "steps": steps, **overrides}
    items, captions = pipeline.content_set(SEEDS["content"], IMAGES)
    content = pipeline.train_qrlora(model, clip, vae, items, captions, f"{prefix}/content", pipeline.CONTENT_TRIGGER,
                                    seed=SEEDS["content"], **settings, **TARGETS["content"])
    items, captions = pipeline.style_set(SEEDS["style"], IMAGES)
    style = pipeline.train_qrlora(model, clip, vae, items, captions, f"{prefix}/style", f"{pipeline.STYLE_TRIGGER} style",
                                  seed=SEEDS["style"], **settings, **TARGETS["style"])
    return content, style


def check(model, clip, vae, folder: str, steps: int, every: int, seeds: int) -> None:
    """Score the mix and each adapter alone (toy_world.scores) after `steps` (and every `every`) training steps."""
    from comfyui_qrlora.qrlora_core.formats import load_adapter

    from toy_world import scores, world

    for k in [*range(every, steps, every), steps] if every else [steps]:
        pair = [load_adapter(os.path.join(folder, sorted(f for f in os.listdir(folder) if f.startswith(kind) and f.endswith(f"{k:06}.safetensors"))[-1]))
                for kind in ("content", "style")]
        for label, weights in (("mix", (1.0, 1.0)), ("content alone", (1.0, 0.0)), ("style alone", (0.0, 1.0))):
            patched = pipeline.mix_qrlora(model, *pair, *weights)
            for seed in range(seeds):
                s = scores.score(pipeline.generate(patched, clip, vae, pipeline.MIX_PROMPT, seed),
                                 world.HELD_OUT_SHAPE, world.HELD_OUT_STYLE, world.CHECKER_COLOURS)
                print(f"after {k} steps, {label}, seed {seed}: heart IoU {s['shape_iou']:.3f} (closest {s['best_shape']}), "
                      f"checker pattern {s['pattern']:.3f} (closest {s['best_style']}) -> {'checkered heart' if s['success'] else 'no'}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--out", default=model_files.WEIGHTS, help="where the two adapter files go")
    parser.add_argument("--comfyui", help="ComfyUI's source (default: the pack's .comfyui)")
    parser.add_argument("--check", type=int, default=0, metavar="N",
                        help="then sample 'a <c> shape in <s> style' with seeds 0..N-1 from the mix and from each adapter alone, and score it")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="K", help="with --check: also check the checkpoints every K steps")
    args = parser.parse_args()
    import torch

    pipeline.import_host(args.comfyui, cpu=not torch.cuda.is_available())
    from comfyui_qrlora.qrlora_core.formats import load_adapter, save_native
    work = tempfile.mkdtemp(prefix="toy_world_adapters_")
    try:
        pipeline.install_models(os.path.join(work, "models"))
        pipeline.use_folders(os.path.join(work, "models"), os.path.join(work, "output"))
        model, clip, vae = pipeline.load_models()
        started = time.time()
        (content, c_losses), (style, s_losses) = train_pair(model, clip, vae, args.steps, "toy_world", checkpoint_every=args.checkpoint_every)
        for adapter, losses, name in ((content, c_losses, model_files.CONTENT_ADAPTER), (style, s_losses, model_files.STYLE_ADAPTER)):
            source = os.path.join(work, "models", "loras", adapter.source)
            target = os.path.join(args.out, os.path.basename(name))
            save_native(load_adapter(source), target, dtype=torch.float16)  # the adapter alone, fp16: no optimizer state
            print(f"{target}: {args.steps} steps, loss {sum(losses[:10]) / 10:.4f} (first 10) -> {sum(losses[-10:]) / 10:.4f} (last 10)")
        print(f"trained both in {time.time() - started:.0f} s")
        if args.check:
            check(model, clip, vae, os.path.join(work, "models", "loras", "toy_world"), args.steps, args.checkpoint_every, args.check)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
