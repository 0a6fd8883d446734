"""Disentanglement on the toy world: QR-LoRA merge vs two plain LoRAs, scored against the world's definition.

    python bench/disentangle.py --out bench/reference/disentangle-h200.json   # on the GPU machine, a few minutes
    python bench/disentangle.py --smoke                                        # CPU-sized: one pair, few steps

For each held-out content shape (heart, star) a content adapter is trained
on a few images of it in base styles ("a red <c> shape in dots style"), and
for each held-out style (checkerboard, concentric rings) a style adapter on
a few base shapes in it ("a circle in <s> style"): once with the pack's
QRLoRATrain (the shipped adapters' recipe and targets, toy_world/adapters.py)
and once with ComfyUI's stock TrainLoraNode (every layer: it has no target
choice), same images, captions, steps, rank, learning rate, batch and seed.
--contents / --styles pick some of them (run the pairs in parallel, then
--combine their JSON files into one table). Every (content, style) pair is then mixed,
QR-LoRA through QRLoRAMerge + QRLoRAApply (one ΔR sum on the shared Q),
plain LoRAs through two stock LoraModelLoader nodes (the sum of both
deltas), and "a <c> shape in <s> style" is sampled (KSampler, the same
seeds for both). Scores (toy_world/scores.py): shape IoU with the held-out
shape, pattern agreement with the held-out style, and success = the best
matching world shape is the held-out one and the pattern agreement is at
least scores.PATTERN_PASS. Also the paper's per-layer cosine of the two adapters'
deltas (Q·ΔR for QR-LoRA, up·down for LoRA), over the layers both train.

Runs the nodes' own code in-process (toy_world.pipeline), nothing made for
the bench.
"""

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from toy_world import pipeline, scores, world  # noqa: E402



def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def lora_delta_cosines(a: dict, b: dict, layers: set | None = None) -> dict:
    """Per layer, the cosine of two stock LoRAs' deltas up·down (layers: module names to keep, or all)."""
    out = {}
    for key in a:
        if not key.endswith(".lora_up.weight"):
            continue
        name = key[: -len(".lora_up.weight")]
        if layers is not None and name not in layers:
            continue
        da = (a[key].float().flatten(1) @ a[name + ".lora_down.weight"].float().flatten(1)).flatten()
        db = (b[key].float().flatten(1) @ b[name + ".lora_down.weight"].float().flatten(1)).flatten()
        denom = (da.norm() * db.norm()).item()
        out[name] = (da @ db).item() / denom if denom > 0 else 0.0
    return out


def qr_layer_modules(model, adapter) -> set:
    """The module names (as the stock LoRA names them) of the layers a QR-LoRA trains."""
    from comfyui_qrlora.integration.targets import resolve_targets

    found, _ = resolve_targets(model, adapter)
    keys = set()
    for value in found.values():
        key = value[0] if isinstance(value, tuple) else value
        keys.add(key[: -len(".weight")] if key.endswith(".weight") else key)
    return keys


def score_variants(model, clip, vae, content, style, shape, style_name, seeds, variants) -> dict:
    """{variant: mean scores over seeds} for QR-LoRA mixes with the given (content weight, style weight)."""
    colours = world.FIXED_COLOURS[style_name]
    out = {}
    for variant, (wc, ws) in variants.items():
        patched = pipeline.mix_qrlora(model, content, style, wc, ws)
        rows = [scores.score(pipeline.generate(patched, clip, vae, pipeline.MIX_PROMPT, seed), shape, style_name, colours) for seed in seeds]
        out[variant] = {k: float(np.mean([r[k] for r in rows])) for k in ("shape_iou", "pattern", "success")}
        out[variant]["shape_match"] = float(np.mean([r["best_shape"] == shape for r in rows]))
    return out


def steps_curve(model, clip, vae, learning_rate, steps, every, seeds) -> list:
    """The shipped pair's recipe at one learning rate: success of the merge (and of each adapter alone) every `every` steps.

    Trains the heart and checkerboard adapters as toy_world.adapters does,
    with checkpoints, and scores each checkpoint pair loaded by the Load
    QR-LoRA node.
    """
    from comfyui_qrlora.nodes.loader import QRLoRALoader

    import folder_paths
    from toy_world import adapters as recipe

    prefix = f"curve_lr{learning_rate:g}"
    recipe.train_pair(model, clip, vae, steps, prefix, learning_rate=learning_rate, checkpoint_every=every)
    folder = os.path.join(folder_paths.get_folder_paths("loras")[0], prefix)
    rows = []
    for k in list(range(every, steps, every)) + [steps]:
        found = {}
        for kind in ("content", "style"):
            name = sorted(f for f in os.listdir(folder) if f.startswith(kind) and f.endswith(f"_step{k:06}.safetensors"))[-1]
            found[kind] = pipeline.node(QRLoRALoader.execute, lora_name=f"{prefix}/{name}")[0]
        row = {"learning_rate": learning_rate, "steps": k, **score_variants(
            model, clip, vae, found["content"], found["style"], world.HELD_OUT_SHAPE, world.HELD_OUT_STYLE, seeds,
            {"merge": (1.0, 1.0), "content_only": (1.0, 0.0), "style_only": (0.0, 1.0)})}
        log(f"lr {learning_rate:g}, {k} steps: " + ", ".join(
            f"{v} success {row[v]['success']:.2f} (IoU {row[v]['shape_iou']:.2f}, pattern {row[v]['pattern']:.2f})"
            for v in ("merge", "content_only", "style_only")))
        rows.append(row)
    return rows


def summarize(cosines: dict) -> dict:
    values = np.abs(np.array(list(cosines.values()))) if cosines else np.zeros(1)
    return {"layers": len(cosines), "mean_abs": float(values.mean()), "max_abs": float(values.max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", help="ComfyUI's source (default: the pack's .comfyui)")
    parser.add_argument("--out", help="write the raw results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="CPU-sized: one pair, few steps, 4 images at batch 2, one seed")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--curve-every", type=int, default=50,
                        help="score the shipped pair's checkpoints every N steps (merge and each adapter alone)")
    parser.add_argument("--curve-lrs", default="", help="learning rates for that curve, comma-separated (none: skip it)")
    parser.add_argument("--sampler-steps", type=int, help="fewer sampling steps (a quick check of the script)")
    parser.add_argument("--contents", help=f"held-out shapes to train, comma-separated (default: {','.join(world.BENCH_SHAPES)})")
    parser.add_argument("--styles", help=f"held-out styles to train, comma-separated (default: {','.join(world.BENCH_STYLES)})")
    parser.add_argument("--combine", nargs="+", metavar="JSON", help="print the table of runs made apart (one pair each, in parallel)")
    args = parser.parse_args()
    if args.combine:
        print(table(combined([json.load(open(path)) for path in args.combine])))
        return 0
    cpu = args.smoke or not torch.cuda.is_available()
    pipeline.import_host(args.comfyui, cpu=cpu)
    from toy_world import adapters as recipe  # the shipped adapters' recipe (rank, learning rate, batch)

    steps = args.steps or (12 if args.smoke else recipe.STEPS)
    curve_every = args.curve_every
    curve_lrs = [float(v) for v in args.curve_lrs.split(",") if v.strip()]
    if args.sampler_steps:
        pipeline.SAMPLER["steps"] = args.sampler_steps
    seeds = list(range(args.seeds or (1 if args.smoke else 6)))
    contents = args.contents.split(",") if args.contents else world.BENCH_SHAPES[:1] if args.smoke else world.BENCH_SHAPES
    styles = args.styles.split(",") if args.styles else world.BENCH_STYLES[:1] if args.smoke else world.BENCH_STYLES
    settings = {**recipe.RECIPE, "steps": steps}
    images = recipe.IMAGES
    if args.smoke:  # the stock trainer takes about 19 s a step at the recipe's batch of 8 on 2 CPU cores
        images, settings["batch_size"] = 4, 2
    work = tempfile.mkdtemp(prefix="toy_world_bench_")
    results = {
        "date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name() if not cpu else "cpu",
        "torch": torch.__version__, "settings": settings, "images_per_adapter": images, "seeds": seeds,
        "sampler": pipeline.SAMPLER, "pattern_pass": scores.PATTERN_PASS, "pairs": [], "adapters": {},
    }
    started = time.time()
    try:
        pipeline.install_models(os.path.join(work, "models"))
        pipeline.use_folders(os.path.join(work, "models"), os.path.join(work, "output"))
        model, clip, vae = pipeline.load_models()
        trained = {}
        common = {k: settings[k] for k in ("rank", "steps", "learning_rate", "batch_size", "training_dtype", "gradient_checkpointing")}
        for kind, names, make in (("content", contents, pipeline.content_set), ("style", styles, pipeline.style_set)):
            for name in names:
                n = (world.BENCH_SHAPES if kind == "content" else world.BENCH_STYLES).index(name)
                seed = recipe.SEEDS[kind] + n  # the heart and the checkerboard: the shipped adapters' images and seeds
                items, captions = make(seed, images, name)
                t = time.time()
                qr, qr_losses = pipeline.train_qrlora(model, clip, vae, items, captions, f"bench/{kind}", "", seed=seed,
                                                      **settings, **recipe.TARGETS[kind])
                t_qr = time.time() - t
                t = time.time()
                lora, lora_losses = pipeline.train_plain_lora(model, clip, vae, items, captions, seed=seed, **common)
                t_lora = time.time() - t
                trained[(kind, name)] = (qr, lora)
                results["adapters"][f"{kind}:{name}"] = {
                    "captions": captions, "qr_loss_first_last": [float(np.mean(qr_losses[:10])), float(np.mean(qr_losses[-10:]))],
                    "lora_loss_first_last": [float(np.mean(lora_losses[:10])), float(np.mean(lora_losses[-10:]))],
                    "qr_seconds": t_qr, "lora_seconds": t_lora,
                }
                log(f"trained {kind} {name}: QR-LoRA {t_qr:.0f} s (loss {np.mean(qr_losses[:10]):.4f} -> {np.mean(qr_losses[-10:]):.4f}), "
                    f"LoRA {t_lora:.0f} s (loss {np.mean(lora_losses[:10]):.4f} -> {np.mean(lora_losses[-10:]):.4f})")
        gallery = []
        for shape in contents:
            for style in styles:
                (qr_c, lora_c), (qr_s, lora_s) = trained[("content", shape)], trained[("style", style)]
                layers = qr_layer_modules(model, qr_c)
                from comfyui_qrlora.qrlora_core.similarity import delta_cosine

                pair = {"content": shape, "style": style,
                        "qr_delta_cosine": summarize(delta_cosine(qr_c, qr_s)),
                        "lora_delta_cosine_same_layers": summarize(lora_delta_cosines(lora_c, lora_s, layers)),
                        "lora_delta_cosine_all_layers": summarize(lora_delta_cosines(lora_c, lora_s))}
                variants = {
                    "qr_merge": pipeline.mix_qrlora(model, qr_c, qr_s),
                    "lora_merge": pipeline.mix_plain_loras(model, lora_c, lora_s),
                }
                if shape == world.HELD_OUT_SHAPE and style == world.HELD_OUT_STYLE:
                    variants["qr_content_only"] = pipeline.mix_qrlora(model, qr_c, qr_s, 1.0, 0.0)
                    variants["qr_style_only"] = pipeline.mix_qrlora(model, qr_c, qr_s, 0.0, 1.0)
                colours = world.FIXED_COLOURS[style]
                for variant, patched in variants.items():
                    rows = []
                    for seed in seeds:
                        image = pipeline.generate(patched, clip, vae, pipeline.MIX_PROMPT, seed)
                        s = scores.score(image, shape, style, colours)
                        rows.append(s)
                        if seed < 4:
                            gallery.append(image)
                    pair[variant] = {
                        "shape_iou": float(np.mean([r["shape_iou"] for r in rows])),
                        "shape_match": float(np.mean([r["best_shape"] == shape for r in rows])),
                        "pattern": float(np.mean([r["pattern"] for r in rows])),
                        "success": float(np.mean([r["success"] for r in rows])),
                        "per_seed": rows,
                    }
                    log(f"{shape} x {style} {variant}: shape IoU {pair[variant]['shape_iou']:.3f}, shape match {pair[variant]['shape_match']:.2f}, "
                        f"pattern {pair[variant]['pattern']:.3f}, success {pair[variant]['success']:.2f}")
                log(f"{shape} x {style} delta cosine: QR-LoRA mean |cos| {pair['qr_delta_cosine']['mean_abs']:.4f}, "
                    f"LoRA (same layers) {pair['lora_delta_cosine_same_layers']['mean_abs']:.4f}")
                results["pairs"].append(pair)
                save(results, gallery, len(seeds[:4]), args.out)  # kept as it goes, should a later pair fail
        results["steps_curve"] = []
        for lr in curve_lrs:
            results["steps_curve"] += steps_curve(model, clip, vae, lr, steps, curve_every, seeds[:4])
            save(results, gallery, len(seeds[:4]), args.out)
        results["seconds"] = time.time() - started
        save(results, gallery, len(seeds[:4]), args.out)
        print(table(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def combined(runs: list) -> dict:
    """Runs of one or more pairs each (same recipe and seeds), as one result."""
    out = dict(runs[0])
    out["pairs"] = [pair for run in runs for pair in run["pairs"]]
    out["adapters"] = {k: v for run in runs for k, v in run["adapters"].items()}
    return out


def save(results: dict, gallery: list, per_row: int, out: str | None) -> None:
    """The raw results as JSON, and the first seeds' images of every cell as a PNG beside it."""
    if not out:
        return
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    if gallery:
        from PIL import Image

        rows = [np.concatenate(gallery[i:i + per_row], axis=1) for i in range(0, len(gallery), per_row)]
        Image.fromarray(np.concatenate(rows, axis=0)).save(os.path.splitext(out)[0] + ".png")


def table(results: dict) -> str:
    """The README's table: one row per pair and method."""
    lines = [
        f"{results['date']} · {results['device']} · torch {results['torch']} · {results['settings']['steps']} steps, rank "
        f"{results['settings']['rank']}, {results['images_per_adapter']} images per adapter, {len(results['seeds'])} seeds per cell",
        "",
        "| content × style | method | shape IoU | shape match | pattern | success | mean \\|cos\\| of the two deltas |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pair in results["pairs"]:
        for variant, label, cos in (("qr_merge", "QR-LoRA merge", pair["qr_delta_cosine"]["mean_abs"]),
                                    ("lora_merge", "LoRA + LoRA", pair["lora_delta_cosine_same_layers"]["mean_abs"]),
                                    ("qr_content_only", "QR content only", None), ("qr_style_only", "QR style only", None)):
            if variant not in pair:
                continue
            v = pair[variant]
            lines.append(f"| {pair['content']} × {pair['style']} | {label} | {v['shape_iou']:.2f} | {v['shape_match']:.2f} | "
                         f"{v['pattern']:.2f} | {v['success']:.2f} | {'' if cos is None else f'{cos:.3f}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
