"""Section 5: data parallel training throughput on 1, 2 (and 4) GPUs: samples per second and the speedup.

Each count is one `torchrun --nproc_per_node N` launch of this file's
worker (the run's own processes, NCCL between GPUs; gloo on the CPU for
--smoke). Every process builds ComfyUI's Flux (FLUX.1-dev's depth and
widths, random bf16 weights, the same on every process) and trains it
through the pack's TrainingSession with its StepShare hooks, i.e. what
`torchrun ... train.py` runs after loading the model file: rank 64,
512 px latents, a 512-token T5 context, the reference defaults (global
batch 1 x 4 accumulation, bf16, gradient checkpointing, AdamW). The first
steps (the basis, warm-up) are not timed; throughput = samples per step /
median step time of process 0, whose steps end with the gradient
all-reduce, so communication is included.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

WARMUP_STEPS, TIMED_STEPS = 2, 4
LAUNCH_TIMEOUT_S = 600  # a hung collective ends the section, not the whole bench
GOAL_2 = 1.85


def counts(ctx) -> list[int]:
    if ctx.device.type != "cuda":
        return [1, 2]
    gpus = torch.cuda.device_count()
    return [n for n in (1, 2, 4) if n <= gpus]


def run(ctx) -> dict:
    out = {"rank": ctx.rank, "px": ctx.train_px, "tokens": ctx.train_tokens, "batch": 1, "grad_accumulation": 4, "runs": {}}
    for n in counts(ctx):
        with tempfile.TemporaryDirectory(dir=ctx.scratch) as folder:
            result = os.path.join(folder, "result.json")
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", str(29400 + n),
                       os.path.abspath(__file__), "--out", result, "--rank", str(ctx.rank), "--px", str(ctx.train_px),
                       "--tokens", str(ctx.train_tokens), "--base", folder]
            command += ["--smoke"] if not ctx.full else []
            command += ["--cpu"] if ctx.device.type != "cuda" else []
            command += ["--comfyui", ctx.args.comfyui] if ctx.args.comfyui else []
            ctx.log(f"scaling: {n} process(es)")
            started = time.time()
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": "1"} if ctx.device.type != "cuda" else {})}  # CPU: one thread a process, as torchrun sets for N > 1
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT_S)
            if done.returncode != 0 or not os.path.isfile(result):
                raise RuntimeError(f"{n} processes failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            with open(result) as f:
                out["runs"][str(n)] = json.load(f)
            r = out["runs"][str(n)]
            ctx.log(f"  {r['samples_per_s']:.3f} samples/s (step {r['step_s']:.3f} s), launch {time.time() - started:.0f} s")
    one = out["runs"]["1"]["samples_per_s"]
    for n, r in out["runs"].items():
        r["speedup"] = r["samples_per_s"] / one
    return out


def rows(s: dict) -> list[list[str]]:
    """Table rows for bench/run.py."""
    out = []
    one = s["runs"]["1"]
    for n, r in s["runs"].items():
        goal = f">= {GOAL_2}x" if n == "2" else "-"
        met = "n/a" if n != "2" else ("met" if r["speedup"] >= GOAL_2 else "NOT met")
        out.append([f"data parallel training, {s['px']} px, r={s['rank']}, global batch {s['batch']}x{s['grad_accumulation']}: {n} vs 1 process(es)",
                    f"{r['samples_per_s']:.2f} vs {one['samples_per_s']:.2f} samples/s", f"{r['speedup']:.2f}x", goal, met])
    return out


# ---------------------------------------------------------------- one process of a launch


def worker(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--px", type=int, required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--comfyui", default=None)
    args = p.parse_args(argv)

    import torch.distributed as dist

    from devkit import host

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cpu = args.cpu or not torch.cuda.is_available()
    if not cpu:
        torch.cuda.set_device(local)
    host.import_comfy(args.comfyui, cpu=cpu, pinned_memory=False)
    host.import_pack(entry_point=False)
    import comfy.model_patcher
    import folder_paths

    folder_paths.add_model_folder_path("qrlora_bases", os.path.join(args.base, "qrlora_bases"), is_default=True)  # the launch's scratch folder
    from comfyui_qrlora.integration.training.session import TrainingSession
    from comfyui_qrlora.qrlora_core.training import TrainConfig
    from comfyui_qrlora.qrlora_core.training.distributed import StepShare

    from bench.common import sync
    from bench.flux import FULL, SMOKE, build_model

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cpu") if cpu else torch.device("cuda", local)
    if world > 1:
        dist.init_process_group("gloo" if cpu else "nccl", **({} if cpu else {"device_id": device}))
    size = SMOKE if args.smoke else FULL
    model = build_model(size, device, seed=0)  # the same weights on every process
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    generator = torch.Generator().manual_seed(1)
    images = 8
    latents = [{"samples": torch.randn(images, 16, args.px // 8, args.px // 8, generator=generator)}]
    positive = [[[torch.randn(1, args.tokens, 4096, generator=generator), {"pooled_output": torch.randn(1, 768, generator=generator)}]]]
    config = TrainConfig(rank=args.rank, steps=WARMUP_STEPS + TIMED_STEPS, training_dtype="bf16" if not cpu else "fp32",
                         gradient_checkpointing=True, filename_prefix="bench/scaling")
    parallel = StepShare(config.batch_size, config.grad_accumulation) if world > 1 else None
    if int(os.environ.get("RANK", "0")) == 0:
        _store_random_basis(patcher, config, device)
    ends = []

    def after_step(step: int, loss: float) -> None:
        sync(device)
        ends.append(time.perf_counter())

    with torch.inference_mode(False):
        session = TrainingSession(patcher, config, latents, positive, parallel=parallel)
        with session:
            sync(device)
            ends.append(time.perf_counter())
            session.run(config.steps, after_step)
    steps = [b - a for a, b in zip(ends[WARMUP_STEPS:], ends[WARMUP_STEPS + 1:])]
    step_s = sorted(steps)[len(steps) // 2]
    samples = config.batch_size * config.grad_accumulation
    if int(os.environ.get("RANK", "0")) == 0:
        result = {"processes": world, "step_s": step_s, "steps_s": steps, "samples_per_step": samples, "samples_per_s": samples / step_s,
                  "layers": len(session.targets.layers), "device": torch.cuda.get_device_name(device) if not cpu else "cpu",
                  "peak_bytes": torch.cuda.max_memory_allocated(device) if not cpu else None}
        with open(args.out, "w") as f:
            json.dump(result, f)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _store_random_basis(patcher, config, device) -> None:
    """Process 0's basis store gets random orthonormal Qs for this model, as in the train section (bench/training.py).

    The random weights' spectra are flat, so an honest decomposition takes
    the slow exact path, which section 1 times; process 0 still loads the
    basis through its store and broadcasts it, as a real run does.
    """
    from types import SimpleNamespace

    from bench import training

    sessions = training._session_module()
    where, _ = sessions.choose_targets(patcher, config)
    generator = torch.Generator(device=device).manual_seed(11)
    qs = {n: torch.linalg.qr(torch.randn(w.shape[0], config.rank, device=device, generator=generator))[0]
          for n, w in sessions.base_weights(patcher, where, device).items()}
    training._store_basis(SimpleNamespace(rank=config.rank, device=device, train_steps=1), patcher, qs)


if __name__ == "__main__":
    worker()
