"""What the objective does to a small run: the tests' small Flux trained with each objective, then scored alike.

    python bench/objective_curve.py [--steps 40]

Both runs use the same seed, images, caption and settings (rank 8, lr 1e-3,
AdamW, grad accumulation 1) through QRLoRATrain's TrainingSession. Their
own loss curves are in different units (velocity MSE vs x0 MSE), so each
trained adapter is also scored on one fixed evaluation set: the velocity
MSE at sigma 0.1, 0.3, 0.5, 0.7, 0.9 (fixed noise), relative to the
untrained model. CPU, a few minutes.
"""

import argparse
import json
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from devkit import models
    from devkit.host import import_pack

    import_pack()
    import folder_paths

    from comfyui_qrlora.integration.training.session import Batch, TrainingSession
    from comfyui_qrlora.qrlora_core.training import TrainConfig
    from comfyui_qrlora.qrlora_core.training.objective import COMFYUI, REFERENCE

    folder = tempfile.mkdtemp()
    for name in ("loras", "qrlora_bases"):
        os.makedirs(os.path.join(folder, name))
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder, name)], {".safetensors"})
    g = torch.Generator().manual_seed(0)
    latents = [{"samples": torch.randn(2, 16, 16, 16, generator=g)}]
    positive = [[[torch.randn(1, 8, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 3.5}]]]
    sigmas = [0.1, 0.3, 0.5, 0.7, 0.9]
    eval_noise = torch.randn(2, 16, 16, 16, generator=g)
    model = models.patcher("flux", seed=1)
    out = {}
    for objective in (REFERENCE, COMFYUI, "untrained"):
        config = TrainConfig(rank=8, steps=args.steps, learning_rate=1e-3, grad_accumulation=1, training_dtype="fp32",
                             gradient_checkpointing=False, seed=3, objective=COMFYUI if objective == COMFYUI else REFERENCE)
        run = TrainingSession(model, config, latents, positive)
        with run:
            losses = run.run(args.steps) if objective != "untrained" else []
            score = {}
            with torch.no_grad():
                x0 = torch.cat(run.x0)
                for s in sigmas:
                    sigma = torch.full((2,), s)
                    reference = TrainConfig(objective=REFERENCE)
                    run.config, saved = reference, run.config
                    score[s] = float(run.loss(Batch([0, 1], x0, eval_noise, sigma, run.conds_for(0))))
                    run.config = saved
        out[objective] = {"losses": losses, "velocity_mse_by_sigma": score}
        print(objective, "first 5 mean", sum(losses[:5]) / 5 if losses else None, "last 5 mean", sum(losses[-5:]) / 5 if losses else None, score, flush=True)
    base = out["untrained"]["velocity_mse_by_sigma"]
    for objective in (REFERENCE, COMFYUI):
        rel = {s: out[objective]["velocity_mse_by_sigma"][s] / base[s] for s in sigmas}
        out[objective]["relative_to_untrained"] = rel
        print(objective, "velocity MSE / untrained by sigma:", {s: round(v, 4) for s, v in rel.items()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
