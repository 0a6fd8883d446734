"""QRLoRATrain's own execute on ComfyUI's Flux, on a GPU, each variant in a fresh process.

    python dev/tests/gpu/train_flux.py [--comfyui DIR] [--out results.json]

Variants: the tests' small Flux (2+2 blocks, hidden 256) and one at
FLUX.1-dev's full width (hidden 3072, 24 heads; 2+2 blocks), training
dtype bf16 and fp32 (bf16 weights, as a FLUX.1-dev checkpoint holds them;
bf16 runs under bf16 autocast as the node runs it), with and without
gradient checkpointing. Each runs in a fresh Python process (a failure
that shows only on a process's first backward must show here) and trains
3 steps through `QRLoRATrain.execute`, the node's entry point.

Checks per variant: finite losses, every ΔR trained. Across variants: the
first loss (before any update) is the same with and without checkpointing,
and so is the second (after one update, so the gradients agree), to
training-dtype precision.

tests/gpu/test_train_flux.py runs this under pytest when CUDA is there.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = {"small": dict(hidden=256, heads=2, depth=2, single=2), "full-width": dict(hidden=3072, heads=24, depth=2, single=2)}
STEPS = 3


def variant(size: str, dtype: str, checkpointing: bool, comfyui: str | None, cpu: bool = False) -> dict:
    """One training run in this (fresh) process."""
    sys.path.insert(0, ROOT)
    import torch

    from devkit import host
    from bench.flux import FluxSize, build_model

    host.import_comfy(comfyui, cpu=cpu, pinned_memory=False)
    host.import_pack(entry_point=False)
    import comfy.model_patcher
    import folder_paths

    folders = tempfile.mkdtemp()
    for name in ("loras", "qrlora_bases"):
        os.makedirs(os.path.join(folders, name))
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folders, name)], {".safetensors"})
    train = host.module("nodes.train")

    device = torch.device("cpu" if cpu else "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    flux = FluxSize(**SIZES[size])
    model = build_model(flux, device)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    tokens, side = (512, 64) if size == "full-width" else (16, 16)
    latents = [{"samples": torch.randn(2, 16, side, side, generator=generator)}]
    caption = [[torch.randn(1, tokens, 4096, generator=generator), {"pooled_output": torch.randn(1, 768, generator=generator), "guidance": 3.5}]]
    settings = {
        "rank": 64 if size == "full-width" else 16, "steps": STEPS, "grad_accumulation": 2, "learning_rate": 1e-3,
        "training_dtype": dtype, "gradient_checkpointing": checkpointing, "filename_prefix": "gpu/run",
    }
    sync()
    started = time.time()
    out = train.QRLoRATrain.execute(model=[patcher], latents=latents, positive=[caption], **{k: [v] for k, v in settings.items()})
    sync()
    adapter, _, loss_map, steps = out.args
    losses = loss_map["loss"]
    trained = sum(bool(t.delta_r.any()) for t in adapter.targets.values())
    return {
        "size": size, "dtype": dtype, "checkpointing": checkpointing, "losses": losses, "steps": steps,
        "layers": len(adapter.targets), "layers_trained": trained, "seconds": time.time() - started,
        "peak_gib": torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else 0.0,
        "ok": steps == STEPS and len(losses) == STEPS and all(l == l and abs(l) < float("inf") for l in losses) and trained == len(adapter.targets),
    }


def fresh_process(size, dtype, checkpointing, comfyui, cpu=False) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--variant", f"{size},{dtype},{int(checkpointing)}"] + (["--cpu"] if cpu else [])
    if comfyui:
        command += ["--comfyui", comfyui]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"size": size, "dtype": dtype, "checkpointing": checkpointing, "ok": False, "error": done.stderr[-3000:]}
    return json.loads(lines[-1][len("RESULT "):])


def agreement(results: list[dict]) -> list[dict]:
    """Checkpointing must not change the run: same first and second loss with and without it."""
    out = []
    for size in sorted({r["size"] for r in results}):
        for dtype, tolerance in (("bf16", 2e-2), ("fp32", 1e-4)):
            pair = {r["checkpointing"]: r for r in results if r["size"] == size and r["dtype"] == dtype and r.get("ok")}
            if len(pair) != 2:
                out.append({"size": size, "dtype": dtype, "ok": False, "why": "a variant failed"})
                continue
            a, b = pair[False]["losses"], pair[True]["losses"]
            diffs = [abs(x - y) / abs(x) for x, y in zip(a[:2], b[:2])]
            out.append({"size": size, "dtype": dtype, "relative_differences": diffs, "tolerance": tolerance, "ok": max(diffs) <= tolerance})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", action="store_true", help="the small variants on the CPU (a smoke check of this script)")
    parser.add_argument("--parallel", type=int, default=4, help="fresh processes at a time")
    args = parser.parse_args(argv)
    if args.variant:
        size, dtype, checkpointing = args.variant.split(",")
        print("RESULT " + json.dumps(variant(size, dtype, checkpointing == "1", args.comfyui, args.cpu)), flush=True)
        return 0
    from concurrent.futures import ThreadPoolExecutor

    sizes = ["small"] if args.cpu else list(SIZES)
    jobs = [(s, d, c) for s in sizes for d in ("bf16", "fp32") for c in (False, True)]
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda job: fresh_process(*job, args.comfyui, args.cpu), jobs))
    report = {"variants": results, "checkpointing_agrees": agreement(results)}
    for r in results:
        state = "ok" if r.get("ok") else "FAILED"
        print(f"{r['size']:10s} {r['dtype']} checkpointing={r['checkpointing']!s:5s} {state}: "
              + (f"losses {[round(l, 4) for l in r['losses']]}, {r['seconds']:.1f} s, peak {r['peak_gib']:.1f} GiB" if "losses" in r else r.get("error", "")[-1500:]))
    for a in report["checkpointing_agrees"]:
        print(f"checkpointing agrees, {a['size']} {a['dtype']}: {'ok' if a['ok'] else 'FAILED'} {a.get('relative_differences', a.get('why'))}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if all(r.get("ok") for r in results) and all(a["ok"] for a in report["checkpointing_agrees"]) else 1


if __name__ == "__main__":
    sys.exit(main())
