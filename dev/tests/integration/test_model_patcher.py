"""Apply to Model on Flux and SDXL through ComfyUI's real ModelPatcher, in-process.

The stock loader cannot detect a small Flux or SDXL from a file (it fixes
their sizes), so these are built from explicit configs with ComfyUI's own
classes; patching and unpatching go through the real ModelPatcher.
"""

import pytest
import torch

from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.decompose import decompose
from devkit import host, models

FLUX_H = 256  # hidden size of the tiny Flux
FLUX_TARGETS = {  # diffusers name -> (ComfyUI key, first row, rows)
    "transformer.transformer_blocks.1.attn.to_v": ("double_blocks.1.img_attn.qkv.weight", 2 * FLUX_H, FLUX_H),
    "transformer.transformer_blocks.0.attn.add_q_proj": ("double_blocks.0.txt_attn.qkv.weight", 0, FLUX_H),
    "transformer.transformer_blocks.0.ff.net.2": ("double_blocks.0.img_mlp.2.weight", 0, None),
    "transformer.single_transformer_blocks.0.attn.to_k": ("single_blocks.0.linear1.weight", FLUX_H, FLUX_H),
    "transformer.single_transformer_blocks.1.proj_mlp": ("single_blocks.1.linear1.weight", 3 * FLUX_H, 4 * FLUX_H),
}
SDXL_TARGETS = {
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v": ("input_blocks.3.1.transformer_blocks.0.attn2.to_v.weight", 0, None),
    "lora_unet_down_blocks_1_attentions_0_proj_in": ("input_blocks.3.1.proj_in.weight", 0, None),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj": ("middle_block.1.transformer_blocks.0.ff.net.0.proj.weight", 0, None),
}


def block(weight, start, length):
    return weight if length is None else weight[start:start + length]


@pytest.mark.parametrize("arch,targets", [("flux", FLUX_TARGETS), ("sdxl", SDXL_TARGETS)])
def test_apply_patches_exactly_and_unpatches_to_the_original_bits(arch, targets, rng):
    pack = host.import_pack()
    from comfyui_qrlora.nodes.apply import QRLoRAApply

    model = models.patcher(arch)
    base = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    adapter_targets = {}
    for name, (key, start, length) in targets.items():
        b = decompose(block(base[key], start, length), 6)
        adapter_targets[name] = QRTarget(q=b.q, delta_r=torch.randn(6, b.r.shape[1], generator=rng) * 0.05)
    adapter = QRLoRA(adapter_targets, rank=6, alpha=3.0, format="native", source=f"{arch}-test")

    out = QRLoRAApply.execute(model=model, qr_lora=adapter, strength=0.8)
    patched = out.args[0]
    assert f"Patched {len(targets)} of {len(targets)}" in out.ui["text"][0]
    assert pack is not None and not model.patches  # the input model is left alone

    patched.patch_model()
    now = patched.model.diffusion_model.state_dict()
    expected = {}
    for name, (key, start, length) in targets.items():
        w = expected.setdefault(key, base[key].double().clone())
        t = adapter_targets[name]
        block(w, start, length).add_((0.8 * 0.5 * t.q.double() @ t.delta_r.double()).reshape(block(w, start, length).shape))
    for key, w in base.items():
        if key in expected:
            assert torch.allclose(now[key].double(), expected[key], atol=1e-5), key
        else:
            assert torch.equal(now[key], w), key
    patched.unpatch_model()
    for key, w in base.items():
        assert torch.equal(model.model.diffusion_model.state_dict()[key], w), f"{key} not restored bit for bit"


def test_base_weights_are_read_unpatched_while_a_clone_holds_them_patched(rng):
    """Clones share one module; a patched clone must not leak into what the pack reads as the base."""
    host.import_pack()
    from comfyui_qrlora.integration import keymap
    from comfyui_qrlora.nodes.apply import QRLoRAApply

    model = models.patcher("flux")
    name, (key, start, length) = next(iter(FLUX_TARGETS.items()))
    original = block(model.model.diffusion_model.state_dict()[key], start, length).clone()
    b = decompose(original, 4)
    adapter = QRLoRA({name: QRTarget(q=b.q, delta_r=torch.randn(4, b.r.shape[1], generator=rng))}, rank=4, alpha=4.0, format="native")
    patched = QRLoRAApply.execute(model=model, qr_lora=adapter, strength=1.0).args[0]
    patched.patch_model()
    where = keymap.lora_key_map(model)[name]
    live = block(model.model.diffusion_model.state_dict()[key], start, length)
    assert not torch.equal(live, original)  # the shared module really is patched in place now
    assert torch.equal(keymap.target_weight(model, where).reshape(original.shape), original)
    patched.unpatch_model()


def test_layers_stored_in_another_layout_are_not_offered_for_training():
    """SD3's norm_out.linear is kept by ComfyUI with its halves swapped: a basis of that weight
    would be saved under the diffusers name and applied swapped, so training leaves it out."""
    host.import_pack()
    from comfyui_qrlora.integration import keymap

    model = models.patcher("sd3")
    key_map = keymap.lora_key_map(model)
    converted = {n for n, v in key_map.items() if n.startswith("transformer.") and keymap.convert_of(v) is not None}
    assert {"transformer.norm_out.linear", "transformer.transformer_blocks.1.norm1_context.linear"} <= converted
    names = keymap.named_targets(model)
    assert names and not converted & names.keys()
    assert "transformer.transformer_blocks.0.norm1_context.linear" in names  # the same layer in a plain layout stays
