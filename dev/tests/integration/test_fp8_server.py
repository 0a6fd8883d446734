"""fp8 models through the real server: UNETLoader's weight_dtype fp8_e4m3fn, then Apply or Train.

ComfyUI stores such a model's weights in float8 and patches them by
computing W + delta in float32 and rounding stochastically back to float8
(comfy.float.stochastic_rounding, seeded per weight). So the saved patched
weight must be, element by element, a float8 value next to W_fp8 + s·Q·ΔR
(within two float8 spacings: ComfyUI rounds to float16 on the way), and
the rounding must not bias the delta.
"""

import os
import uuid

import pytest
import torch

from integration.conftest import SD3
from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.fingerprint import sketch
from comfyui_qrlora.qrlora_core.formats import load_adapter, save_native
from support.checks import saved_model
from devkit.graph import Graph
from devkit.models import save_diffusion_model

pytestmark = pytest.mark.server

H = 128  # the tiny SD3's hidden size
TARGETS = {  # published name -> (ComfyUI key, row block of the fused qkv or None)
    "transformer.transformer_blocks.0.attn.to_q": ("joint_blocks.0.x_block.attn.qkv.weight", 0),
    "transformer.transformer_blocks.0.attn.to_v": ("joint_blocks.0.x_block.attn.qkv.weight", 2),
    "transformer.transformer_blocks.0.attn.to_out.0": ("joint_blocks.0.x_block.attn.proj.weight", None),
    "transformer.transformer_blocks.1.ff.net.0.proj": ("joint_blocks.1.x_block.mlp.fc1.weight", None),
}


def rows(weight, block):
    return weight if block is None else weight[block * H:(block + 1) * H]


def e4m3_spacing(x: torch.Tensor) -> torch.Tensor:
    """Distance between adjacent float8_e4m3fn values around |x| (3 mantissa bits; subnormal below 2^-6)."""
    exponent = torch.floor(torch.log2(x.abs().clamp(min=2.0**-9))).clamp(min=-6)
    return torch.pow(2.0, exponent - 3)


def save_fp8(client, prefix, with_adapter):
    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD3, weight_dtype="fp8_e4m3fn")
    model, apply = unet, None
    if with_adapter:
        qr = g.add("QRLoRALoader", lora_name=with_adapter)
        model = apply = g.add("QRLoRAApply", model=unet, qr_lora=qr[0], strength=1.0)
    g.add("ModelSave", model=model, filename_prefix=prefix)
    entry = client.run(g.prompt())
    return entry, apply


def test_apply_to_an_fp8_model_adds_the_delta_within_fp8_rounding(comfy, client, base_models, rng):
    base = base_models["sd3"]
    targets = {}
    for name, (key, block) in TARGETS.items():
        weight = rows(base[key], block)
        b = decompose(weight, 8)
        targets[name] = QRTarget(q=b.q, delta_r=torch.randn(8, weight.shape[1], generator=rng) * 0.2, fingerprint=sketch(weight))
    adapter = QRLoRA(targets, rank=8, alpha=8.0, format="native")  # trained on the full-precision base, fingerprints included
    os.makedirs(comfy.path("models", "loras", "test"), exist_ok=True)
    save_native(adapter, comfy.path("models", "loras", "test", "for_fp8.safetensors"))

    plain, patched = f"checks/{uuid.uuid4().hex[:8]}", f"checks/{uuid.uuid4().hex[:8]}"
    save_fp8(client, plain, None)
    entry, apply = save_fp8(client, patched, "test/for_fp8.safetensors")
    report = client.ui(entry, apply.node_id)["text"][0]
    assert f"Patched {len(TARGETS)} of {len(TARGETS)}" in report
    assert "differ from the base" not in report  # an fp8 copy of the base the adapter was trained on is the same base

    before, after = saved_model(comfy, plain), saved_model(comfy, patched)
    changed = {key for key, _ in TARGETS.values()}
    for key, w in before.items():
        if key not in changed:
            assert torch.equal(after[key].view(torch.uint8), w.view(torch.uint8)) if w.dtype.itemsize == 1 else torch.equal(after[key], w), key
    for name, (key, block) in TARGETS.items():
        assert after[key].dtype == torch.float8_e4m3fn  # stays fp8 in memory and on disk
        w8, got = rows(before[key], block).double(), rows(after[key], block).double()
        delta = targets[name].q.double() @ targets[name].delta_r.double()  # s = 1
        want = w8 + delta
        # ComfyUI rounds W + delta to float16 first, which can carry it over a power of two: up to two spacings away
        assert bool(((got - want).abs() <= 2 * e4m3_spacing(want) * (1 + 1e-6)).all()), f"{name}: not an fp8 value next to W + delta"
        bias = float((got - want).mean() / delta.abs().mean())
        error = float((got - w8 - delta).norm() / delta.norm())
        print(f"{name}: delta error {error:.3f} (fp8 rounding), mean rounding {bias:+.1e} of the mean |delta|")
        assert abs(bias) < 0.05 and error < 0.25  # measured 0.07-0.14: fp8 keeps 3 mantissa bits of W + delta


UNET = "fp8train_sd15.safetensors"
DATASET = "fp8train_dataset"


def test_training_on_an_fp8_model_runs_and_takes_its_basis_from_the_fp8_weights(comfy, client):
    state = save_diffusion_model("sd15", comfy.path("models", "diffusion_models", UNET), seed=9)
    generator = torch.Generator().manual_seed(4)
    os.makedirs(comfy.path("output", DATASET), exist_ok=True)
    torch.save({"latents": [{"samples": torch.randn(1, 4, 8, 8, generator=generator)}],
                "conditioning": [[[torch.randn(1, 8, 768, generator=generator), {}]]]},
               comfy.path("output", DATASET, "shard_0000.pkl"))
    settings = {
        "model": ["unet", 0], "latents": ["data", 0], "positive": ["data", 1],
        "rank": 4, "alpha": 0.0, "steps": 2, "learning_rate": 1e-2, "batch_size": 1, "grad_accumulation": 1, "seed": 7,
        "optimizer": "AdamW", "training_dtype": "fp32", "gradient_checkpointing": True,
        "target_preset": "attention only", "target_pattern": "", "triangular": True,
        "checkpoint_every": 0, "filename_prefix": "fp8run/t", "trigger_words": "",
    }
    entry = client.run({
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "fp8_e4m3fn"}},
        "data": {"class_type": "LoadTrainingDataset", "inputs": {"folder_name": DATASET}},
        "train": {"class_type": "QRLoRATrain", "inputs": settings},
    })
    summary = client.ui(entry, "train")["qrlora"][0]
    assert summary["steps"] == 2 and all(map(lambda x: x == x, summary["losses"]))
    adapter = load_adapter(comfy.path("models", "loras", summary["file"]))
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    weight = state["input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"]
    assert torch.allclose(adapter.targets[name].fingerprint, sketch(weight.to(torch.float8_e4m3fn)), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(adapter.targets[name].fingerprint, sketch(weight), rtol=1e-3, atol=0)  # not a wider copy's
    q = decompose(weight.to(torch.float8_e4m3fn).double(), 4).q
    assert torch.allclose(adapter.targets[name].q.abs(), q.abs().float(), atol=1e-3)
