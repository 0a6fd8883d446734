"""What one QR-LoRA training step costs beyond the model, measured.

Two settings:
  --sd15   the tests' small SD1.5 UNet inside ComfyUI's real ModelPatcher
           (CPU), trained layers wrapped exactly as the node does;
  --blocks Flux-shaped blocks (four 3072x3072 projections and a
           3072->12288->3072 MLP per block) in plain PyTorch on the GPU when
           there is one, with and without gradient checkpointing.

Counted exactly (not sampled):
- persistent extras per target: Q (m x r), ΔR (r x n), its gradient and the
  optimizer's state (AdamW: two r x n moments), all float32;
- what autograd keeps for the backward pass, through saved-tensor hooks,
  each storage counted once, split into patched weights W' = W + s·Q·ΔR
  (one m x n tensor per trained weight key, in the training dtype) and
  everything else (activations), against the same forward of the frozen
  model with no adapter;
- on CUDA, the peak memory of a full step (forward, backward, AdamW).

Run from the repository root: python bench/train_memory.py --blocks [--sd15]
"""

import argparse
import json
import os
import sys

import torch
import torch.utils.checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devkit import host  # noqa: E402

host.import_pack(entry_point=False)  # the pack as `comfyui_qrlora`; qrlora_core needs no ComfyUI
from comfyui_qrlora.qrlora_core.training import QRDelta, QRWeightWrapper  # noqa: E402


class SavedTensors:
    """Bytes autograd holds for the backward pass, each storage once."""

    def __init__(self):
        self.storages = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = (tuple(tensor.shape), storage.nbytes())
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def total(self, exclude=()):
        return sum(b for p, (_, b) in self.storages.items() if p not in exclude)


class PatchedWeights:
    """Storages of the W' tensors the wrappers hand to the layers (autograd may save them transposed)."""

    def __init__(self):
        self.pointers = set()
        self.original = QRWeightWrapper.forward

    def __enter__(self):
        def forward(wrapper, weight):
            out = self.original(wrapper, weight)
            self.pointers.add(out.untyped_storage().data_ptr())
            return out

        QRWeightWrapper.forward = forward
        return self

    def __exit__(self, *exc):
        QRWeightWrapper.forward = self.original

    def bytes_in(self, saved: SavedTensors) -> int:
        return sum(b for p, (_, b) in saved.storages.items() if p in self.pointers)


def adapter_bytes(layers) -> dict:
    q = sum(l.q.numel() * l.q.element_size() for l in layers)
    delta = sum(l.delta_r.numel() * l.delta_r.element_size() for l in layers)
    return {"Q": q, "delta_r": delta, "grad": delta, "adamw_moments": 2 * delta, "total": q + 4 * delta}


# ------------------------------------------------------------ Flux-shaped blocks


SHAPES = [(3072, 3072)] * 4 + [(12288, 3072), (3072, 12288)]  # to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2


def block_forward(x, weights):
    q, k, v, o, up, down = weights
    h = torch.nn.functional.linear(x, q) + torch.nn.functional.linear(x, k) + torch.nn.functional.linear(x, v)
    x = x + torch.nn.functional.linear(torch.nn.functional.gelu(h), o)
    return x + torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(x, up)), down)


def run_blocks(depth, tokens, rank, device, dtype, checkpointing, adapter):
    generator = torch.Generator(device="cpu").manual_seed(0)
    base = [[(torch.randn(m, n, generator=generator) / n**0.5).to(device, dtype) for m, n in SHAPES] for _ in range(depth)]
    layers, wrappers = [], []
    if adapter:
        for block in base:
            ws = []
            for w in block:
                q, _ = torch.linalg.qr(torch.randn(w.shape[0], rank, generator=generator))
                layer = QRDelta.zeros(q.to(device), w.shape[1])
                layers.append(layer)
                ws.append(QRWeightWrapper([layer], [None]))
            wrappers.append(ws)
    optimizer = torch.optim.AdamW([l.delta_r for l in layers], lr=1e-4) if layers else None
    x0 = torch.randn(1, tokens, 3072, generator=generator).to(device, dtype)

    def one_block(x, i):
        weights = [wr(w) for wr, w in zip(wrappers[i], base[i])] if adapter else base[i]
        return block_forward(x, weights)

    def step(saved=None):
        x = x0.clone().requires_grad_(not adapter)  # frozen model: let the input carry the graph instead
        context = saved.hooks() if saved else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
        with context:
            for i in range(depth):
                x = torch.utils.checkpoint.checkpoint(one_block, x, i, use_reentrant=False) if checkpointing else one_block(x, i)
            loss = x.float().square().mean()
        loss.backward()
        if optimizer:
            optimizer.step()
            optimizer.zero_grad()

    step()  # optimizer state exists from here on
    saved = SavedTensors()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    with PatchedWeights() as patched:
        step(saved)
    model_ptrs = {w.untyped_storage().data_ptr() for block in base for w in block}
    out = {"saved_for_backward": saved.total(exclude=model_ptrs), "saved_patched_weights": patched.bytes_in(saved)}
    if device.type == "cuda":
        torch.cuda.synchronize()
        out["peak_above_steady"] = torch.cuda.max_memory_allocated() - start
        out["steady_state_allocated"] = start
    if adapter:
        out["adapter_persistent"] = adapter_bytes(layers)
    out["model_bytes"] = sum(w.numel() * w.element_size() for block in base for w in block)
    return out


def blocks(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    depth, tokens = (args.depth, args.tokens) if device.type == "cuda" else (2, 64)
    results = {"device": str(device), "dtype": str(dtype), "depth": depth, "tokens": tokens, "rank": args.rank}
    for checkpointing in (False, True):
        for adapter in (False, True):
            key = f"{'qrlora' if adapter else 'frozen'}{'_checkpointed' if checkpointing else ''}"
            results[key] = run_blocks(depth, tokens, args.rank, device, dtype, checkpointing, adapter)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


# ------------------------------------------------------------ the tests' SD1.5 in ComfyUI


def sd15(args):
    from devkit import models

    host.import_pack()
    import comfy.model_management
    import comfy.utils
    from comfyui_qrlora.integration.training.session import base_weights, trainable_targets
    from comfyui_qrlora.qrlora_core.training.out_of_place import OutOfPlaceForwards
    from comfyui_qrlora.qrlora_core.basis import BasisStore
    from comfyui_qrlora.qrlora_core.training import TrainConfig, TrainTargets, select

    import tempfile

    base = models.patcher("sd15", seed=3)
    candidates = trainable_targets(base)
    where = {n: candidates[n] for n in select(candidates, TrainConfig().target_matcher())}
    with tempfile.TemporaryDirectory() as folder:
        targets = TrainTargets.new(base_weights(base, where, "cpu"), args.rank, float(args.rank), True, BasisStore(folder))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 8, 768, generator=generator)

    def saved_by(patcher, make_input_require_grad):
        comfy.model_management.load_models_gpu([patcher])
        saved = SavedTensors()
        rewrites = OutOfPlaceForwards(patcher.model.diffusion_model)  # as the trainer runs the model
        with torch.enable_grad(), saved.hooks():
            out = patcher.model.apply_model(x.clone().requires_grad_(make_input_require_grad), torch.tensor([400.0]), c_crossattn=context)
        rewrites.restore()
        out.square().mean().backward()
        params = {p.untyped_storage().data_ptr() for p in patcher.model.parameters()}
        return saved, params

    base.model.requires_grad_(False)
    frozen, params = saved_by(base, True)
    mp = base.clone()
    wrappers = targets.wrappers(where)
    for key, wrapper in wrappers.items():
        mp.add_weight_wrapper(key, wrapper)
    with PatchedWeights() as patched_weights:
        trained, params = saved_by(mp, False)
    patched = patched_weights.bytes_in(trained)
    targeted_weights = sum(comfy.utils.get_attr(base.model, key).numel() * 4 for key in wrappers)
    per_target = [
        {"name": n, "m": l.out_features, "n": l.in_features, "persistent": 4 * args.rank * (l.out_features + 4 * l.in_features),
         "patched_weight_while_saved": 4 * l.out_features * l.in_features}
        for n, l in list(targets.layers.items())[:3]
    ]
    return {
        "targets": len(targets.layers), "rank": args.rank, "trained_values": targets.trainable_count(),
        "model_bytes": sum(p.numel() * p.element_size() for p in base.model.diffusion_model.parameters()),
        "targeted_weight_bytes": targeted_weights,
        "adapter_persistent": adapter_bytes(list(targets.layers.values())),
        "saved_for_backward_frozen_model": frozen.total(exclude=params),
        "saved_for_backward_with_adapter": trained.total(exclude=params),
        "saved_patched_weights": patched,
        "examples": per_target,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", action="store_true")
    parser.add_argument("--sd15", action="store_true")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = {}
    if args.sd15:
        results["sd15"] = sd15(argparse.Namespace(rank=4))
    if args.blocks:
        results["blocks"] = blocks(args)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
