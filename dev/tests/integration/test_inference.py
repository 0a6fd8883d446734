"""The inference path through the real server: Load -> (Merge) -> Apply -> stock nodes.

Expected weights are computed here in float64 from the base file and the
adapter tensors, with the ComfyUI keys and row slices written out by hand,
so the pack's key mapping is checked too, not assumed.
"""

import os
import uuid

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from integration.conftest import SD3, SD15
from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.formats import save_native
from support.adapters import write_published
from support.checks import saved_model
from support import seeds
from devkit.graph import Graph

pytestmark = pytest.mark.server

H = 128  # the tiny SD3's hidden size (64 * depth 2)
SD3_TARGETS = {  # published name -> (ComfyUI key, row block of a fused qkv or None)
    "transformer.transformer_blocks.0.attn.to_q": ("joint_blocks.0.x_block.attn.qkv.weight", 0),
    "transformer.transformer_blocks.0.attn.to_k": ("joint_blocks.0.x_block.attn.qkv.weight", 1),
    "transformer.transformer_blocks.0.attn.to_v": ("joint_blocks.0.x_block.attn.qkv.weight", 2),
    "transformer.transformer_blocks.1.attn.add_k_proj": ("joint_blocks.1.context_block.attn.qkv.weight", 1),
    "transformer.transformer_blocks.0.attn.to_out.0": ("joint_blocks.0.x_block.attn.proj.weight", None),
    "transformer.transformer_blocks.1.ff.net.0.proj": ("joint_blocks.1.x_block.mlp.fc1.weight", None),
    "transformer.transformer_blocks.1.ff.net.2": ("joint_blocks.1.x_block.mlp.fc2.weight", None),
}
SD15_TARGETS = {  # kohya name -> ComfyUI key (proj_in is a 1x1 convolution)
    "lora_unet_down_blocks_0_attentions_0_proj_in": "input_blocks.1.1.proj_in.weight",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k": "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
    "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_2": "output_blocks.1.1.transformer_blocks.0.ff.net.2.weight",
}


def rows(weight, block):
    return weight if block is None else weight[block * H:(block + 1) * H]


def apply_and_save(client, model_file, adapter_name, strength):
    prefix = f"checks/{uuid.uuid4().hex[:8]}"
    g = Graph()
    unet = g.add("UNETLoader", unet_name=model_file, weight_dtype="default")
    qr = g.add("QRLoRALoader", lora_name=adapter_name)
    patched = g.add("QRLoRAApply", model=unet, qr_lora=qr[0], strength=strength)
    g.add("ModelSave", model=patched, filename_prefix=prefix)
    entry = client.run(g.prompt())
    return prefix, entry, patched.node_id


def assert_only_targets_changed(base, saved, expected):
    assert saved.keys() == base.keys()
    for key, w in base.items():
        if key not in expected:
            assert torch.equal(saved[key].to(w.dtype), w), f"{key} changed but no adapter layer targets it"
    for key, want in expected.items():
        got = saved[key].double()
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), f"{key}: max error {(got - want).abs().max():.3g}"


@pytest.fixture(scope="module")
def sd3_published(comfy, base_models):
    """A published-format adapter for the tiny SD3, decomposed per published module (qkv rows apart)."""
    g = seeds.generator("test_inference:sd3_published")
    bases = {name: decompose(rows(base_models["sd3"][key], block), 8) for name, (key, block) in SD3_TARGETS.items()}
    os.makedirs(comfy.path("models", "loras", "test"), exist_ok=True)
    tensors = write_published(comfy.path("models", "loras", "test", "sd3_published.safetensors"), bases, g)
    return "test/sd3_published.safetensors", tensors


def test_published_adapter_patches_fused_qkv_slices_exactly(comfy, client, base_models, sd3_published):
    name, tensors = sd3_published
    prefix, entry, apply_id = apply_and_save(client, SD3, name, 0.75)
    base = base_models["sd3"]
    expected = {}
    for target, (key, block) in SD3_TARGETS.items():
        w = expected.setdefault(key, base[key].double().clone())
        q, dr = tensors[f"{target}.lora.q.weight"].double(), tensors[f"{target}.lora.delta_r.weight"].double()
        rows(w, block).add_(0.75 * 1.0 * q @ dr)  # s = alpha / rank = 1 in the published format
    assert_only_targets_changed(base, saved_model(comfy, prefix), expected)
    report = client.ui(entry, apply_id)["text"][0]
    assert f"Patched {len(SD3_TARGETS)} of {len(SD3_TARGETS)}" in report


def test_strength_zero_leaves_the_model_bit_identical(comfy, client, base_models, sd3_published):
    prefix, _, _ = apply_and_save(client, SD3, sd3_published[0], 0.0)
    saved = saved_model(comfy, prefix)
    for key, w in base_models["sd3"].items():
        assert torch.equal(saved[key].to(w.dtype), w), key


def test_adapter_for_another_model_is_an_error_and_the_server_carries_on(comfy, client, sd3_published):
    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD15, weight_dtype="default")
    qr = g.add("QRLoRALoader", lora_name=sd3_published[0])
    g.add("ModelSave", model=g.add("QRLoRAApply", model=unet, qr_lora=qr[0], strength=1.0), filename_prefix="checks/never")
    error = client.run_expecting_error(g.prompt())
    assert "matches none of this model's layers" in error["exception_message"]
    assert client.object_info("QRLoRAApply")  # still serving


def write_native(path, bases, generator, alpha):
    targets = {n: QRTarget(q=b.q, delta_r=torch.randn(b.rank, b.r.shape[1], generator=generator) * 0.02) for n, b in bases.items()}
    adapter = QRLoRA(targets, rank=next(iter(bases.values())).rank, alpha=alpha, format="native")
    save_native(adapter, path)
    return adapter


@pytest.fixture(scope="module")
def sd15_pair(comfy, base_models):
    """A content and a style adapter for the tiny SD1.5, trained (here: drawn) on one shared basis."""
    g = seeds.generator("test_inference:sd15_pair")
    base = base_models["sd15"]
    bases = {name: decompose(base[key], 4) for name, key in SD15_TARGETS.items()}
    os.makedirs(comfy.path("models", "loras", "test"), exist_ok=True)
    content = write_native(comfy.path("models", "loras", "test", "content.safetensors"), bases, g, alpha=8.0)
    style = write_native(comfy.path("models", "loras", "test", "style.safetensors"), bases, g, alpha=8.0)
    return content, style


def test_merge_then_apply_equals_one_delta_r_sum_and_export_matches_stock_lora_loader(comfy, client, base_models, sd15_pair):
    content, style = sd15_pair
    a, b = 0.7, -0.4
    ours, theirs = f"checks/{uuid.uuid4().hex[:8]}", f"checks/{uuid.uuid4().hex[:8]}"
    export_prefix = f"test/export_{uuid.uuid4().hex[:8]}"

    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD15, weight_dtype="default")
    c = g.add("QRLoRALoader", lora_name="test/content.safetensors")
    s = g.add("QRLoRALoader", lora_name="test/style.safetensors")
    merged = g.add("QRLoRAMerge", qr_lora_1=c[0], weight_1=a, qr_lora_2=s[0], weight_2=b)
    g.add("ModelSave", model=g.add("QRLoRAApply", model=unet, qr_lora=merged[0], strength=1.0), filename_prefix=ours)
    export = g.add("QRLoRAExportLoRA", qr_lora=merged[0], filename_prefix=export_prefix, dtype="fp32")
    entry = client.run(g.prompt())
    assert "merged as one ΔR sum" in client.ui(entry, merged.node_id)["text"][0]
    assert "summed as separate" not in client.ui(entry, merged.node_id)["text"][0]
    exported = client.ui(entry, export.node_id)["files"][0]

    base = base_models["sd15"]
    expected = {}
    for name, key in SD15_TARGETS.items():
        tc, ts = content.targets[name], style.targets[name]
        delta = content.scale * tc.q.double() @ (a * tc.delta_r.double() + b * ts.delta_r.double())
        expected[key] = base[key].double() + delta.reshape(base[key].shape)
    assert_only_targets_changed(base, saved_model(comfy, ours), expected)

    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD15, weight_dtype="default")
    stock = g.add("LoraLoaderModelOnly", model=unet, lora_name=exported, strength_model=1.0)
    g.add("ModelSave", model=stock, filename_prefix=theirs)
    client.run(g.prompt())
    assert_only_targets_changed(base, saved_model(comfy, theirs), expected)


def test_sampling_with_the_patched_model_runs_and_changes_the_result(comfy, client, base_models, sd15_pair, text_and_vae):
    clip_name, vae_name = text_and_vae
    images, latents = {}, {}
    for strength in (0.0, 3.0):
        prefix = f"samples/{uuid.uuid4().hex[:8]}"
        g = Graph()
        unet = g.add("UNETLoader", unet_name=SD15, weight_dtype="default")
        clip = g.add("CLIPLoader", clip_name=clip_name, type="stable_diffusion")
        vae = g.add("VAELoader", vae_name=vae_name)
        qr = g.add("QRLoRALoader", lora_name="test/content.safetensors")
        model = g.add("QRLoRAApply", model=unet, qr_lora=qr[0], strength=strength)
        positive = g.add("CLIPTextEncode", clip=clip, text="a photo of a <c> dog")
        negative = g.add("CLIPTextEncode", clip=clip, text="")
        latent = g.add("EmptyLatentImage", width=64, height=64, batch_size=1)
        sampled = g.add("KSampler", model=model, seed=7, steps=2, cfg=2.0, sampler_name="euler", scheduler="normal",
                        positive=positive, negative=negative, latent_image=latent, denoise=1.0)
        save = g.add("SaveImage", images=g.add("VAEDecode", samples=sampled, vae=vae), filename_prefix=prefix)
        save_latent = g.add("SaveLatent", samples=sampled, filename_prefix=prefix)
        entry = client.run(g.prompt())
        info = client.ui(entry, save.node_id)["images"][0]
        images[strength] = np.asarray(Image.open(comfy.path("output", info["subfolder"], info["filename"])))
        info = client.ui(entry, save_latent.node_id)["latents"][0]
        latents[strength] = safetensors.torch.load_file(comfy.path("output", info["subfolder"], info["filename"]))["latent_tensor"]
    assert images[0.0].shape == (64, 64, 3)
    assert latents[0.0].shape == (1, 4, 8, 8) and torch.isfinite(latents[3.0]).all()
    change = (latents[3.0] - latents[0.0]).abs().mean() / latents[0.0].abs().mean()
    assert change > 1e-5, f"the patch did not reach the sampler (relative change {change:.2e})"


@pytest.mark.parametrize("compact", [False, True])
def test_saved_adapter_reloads_to_the_same_patch(comfy, client, base_models, sd3_published, compact):
    prefix = f"test/saved_{uuid.uuid4().hex[:8]}"
    g = Graph()
    qr = g.add("QRLoRALoader", lora_name=sd3_published[0])
    save = g.add("QRLoRASave", qr_lora=qr[0], filename_prefix=prefix, compact=compact, dtype="fp32")
    saved_name = client.ui(client.run(g.prompt()), save.node_id)["files"][0]
    if compact:
        assert any(f.endswith(".safetensors") for f in os.listdir(comfy.path("models", "qrlora_bases")))
        sizes = [os.path.getsize(comfy.path("models", "loras", n)) for n in (saved_name, sd3_published[0])]
        assert sizes[0] < sizes[1] / 3 + 4096  # ΔR only vs Q + R + ΔR
    original, _, _ = apply_and_save(client, SD3, sd3_published[0], 1.0)
    again, _, _ = apply_and_save(client, SD3, saved_name, 1.0)
    a, b = saved_model(comfy, original), saved_model(comfy, again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fingerprint_mismatch_is_reported_on_apply(comfy, client, base_models, sd3_published):
    """An adapter whose recorded base differs from the loaded model gets a warning, not silence."""
    from comfyui_qrlora.qrlora_core.fingerprint import sketch
    from comfyui_qrlora.qrlora_core.formats import load_adapter

    adapter = load_adapter(comfy.path("models", "loras", sd3_published[0]))
    for name, t in adapter.targets.items():
        key, block = SD3_TARGETS[name]
        t.fingerprint = sketch(rows(base_models["sd3"][key], block))
    save_native(adapter, comfy.path("models", "loras", "test", "same_fingerprint.safetensors"))
    for t in adapter.targets.values():
        t.fingerprint = torch.randn(16)  # as if trained on other weights of the same shapes
    save_native(adapter, comfy.path("models", "loras", "test", "other_fingerprint.safetensors"))
    _, entry, apply_id = apply_and_save(client, SD3, "test/same_fingerprint.safetensors", 1.0)
    assert "differ from the base" not in client.ui(entry, apply_id)["text"][0]
    _, entry, apply_id = apply_and_save(client, SD3, "test/other_fingerprint.safetensors", 1.0)
    assert "differ from the base the adapter was trained on" in client.ui(entry, apply_id)["text"][0]
