"""Block weights: every preset and syntax changes exactly the blocks it names, by exactly its weight."""

import pytest
import torch

from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.blocks import LBW_ORDERS, BLOCK_PRESETS, apply_block_weights, block_map, layer_weights
from comfyui_qrlora.qrlora_core.errors import AdapterError

SDXL = {  # kohya names of a real SDXL UNet's attention layers (two layers per block) -> their block
    "lora_unet_down_blocks_1_attentions_0_proj_in": "IN04",
    "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn1_to_q": "IN05",
    "lora_unet_down_blocks_2_attentions_0_transformer_blocks_3_ff_net_2": "IN07",
    "lora_unet_down_blocks_2_attentions_1_proj_out": "IN08",
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k": "MID",
    "lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v": "OUT00",
    "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_attn1_to_out_0": "OUT01",
    "lora_unet_up_blocks_0_attentions_2_proj_in": "OUT02",
    "lora_unet_up_blocks_1_attentions_0_proj_in": "OUT03",
    "lora_unet_up_blocks_1_attentions_2_proj_in": "OUT05",
    "lora_unet_down_blocks_1_resnets_1_time_emb_proj": "IN05",
    "lora_unet_time_embedding_linear_1": None,
}
SD15 = {
    "lora_unet_down_blocks_0_attentions_0_proj_in": "IN01",
    "lora_unet_down_blocks_0_attentions_1_proj_in": "IN02",
    "lora_unet_down_blocks_2_attentions_1_proj_in": "IN08",
    "lora_unet_mid_block_attentions_0_proj_in": "MID",
    "lora_unet_up_blocks_1_attentions_0_proj_in": "OUT03",
    "lora_unet_up_blocks_3_attentions_2_proj_out": "OUT11",
}
FLUX = {
    "transformer.transformer_blocks.0.attn.to_q": "D0",
    "transformer.transformer_blocks.1.ff.net.2": "D1",
    "transformer.transformer_blocks.18.attn.add_k_proj": "D18",
    "transformer.single_transformer_blocks.0.attn.to_k": "S0",
    "transformer.single_transformer_blocks.37.proj_out": "S37",
    "transformer.proj_out": None,
}


def adapter_with(names, rng) -> QRLoRA:
    return QRLoRA({n: QRTarget(q=torch.randn(6, 3, generator=rng), delta_r=torch.randn(3, 5, generator=rng)) for n in names},
                  rank=3, alpha=3.0, format="native")


@pytest.mark.parametrize("layers", [SDXL, SD15, FLUX], ids=["sdxl", "sd15", "flux"])
def test_blocks_are_the_ones_lora_block_weight_names(layers, rng):
    assert block_map(adapter_with(layers, rng).targets) == layers


def named_blocks(spec: str, present: list[str]) -> dict[str, float]:
    """What a spec sets, worked out here from its entries in the simplest way: later entries win."""
    half = present[: (len(present) + 1) // 2]
    out = {}
    for entry in spec.split(","):
        key, value = (p.strip() for p in entry.split("="))
        for b in present:
            group = "MID" if b == "MID" else b.rstrip("0123456789")
            if key in ("*", b, group) or (key == "EARLY" and b in half) or (key == "LATE" and b not in half):
                out[b] = float(value)
    return out


@pytest.mark.parametrize("layers", [SDXL, SD15, FLUX], ids=["sdxl", "sd15", "flux"])
@pytest.mark.parametrize("preset", list(BLOCK_PRESETS))
def test_every_preset_scales_exactly_the_blocks_it_names(layers, preset, rng):
    adapter = adapter_with(layers, rng)
    order = {"IN": 0, "MID": 1, "OUT": 2, "D": 0, "S": 1}
    present = sorted({b for b in layers.values() if b}, key=lambda b: (order[b.rstrip("0123456789")], int(b[len(b.rstrip("0123456789")):] or 0)))
    spec = BLOCK_PRESETS[preset]
    named = named_blocks(spec, present)
    weighted, _ = apply_block_weights(adapter, spec)
    for name, block in layers.items():
        before, after = adapter.targets[name].delta_r, weighted.targets[name].delta_r
        weight = named.get(block, 1.0) if block else (named_blocks(spec, ["X"]).get("X", 1.0) if spec.startswith("*") else 1.0)
        if weight == 1.0:
            assert torch.equal(after, before), f"{preset}: {name} ({block}) changed"
        else:
            assert torch.equal(after, before * weight), f"{preset}: {name} ({block}) not scaled by {weight}"
        assert weighted.targets[name].q is adapter.targets[name].q


def test_named_entries_ranges_and_later_entries_win(rng):
    adapter = adapter_with(SDXL, rng)
    w = layer_weights("IN04-IN07=0.5, in=2, OUT00-2=0, OUT01=3", adapter.targets)
    by_block = {SDXL[n]: v for n, v in w.items()}
    assert by_block == {"IN04": 2.0, "IN05": 2.0, "IN07": 2.0, "IN08": 2.0, "MID": 1.0, "OUT00": 0.0, "OUT01": 3.0, "OUT02": 0.0,
                        "OUT03": 1.0, "OUT05": 1.0, None: 1.0}


@pytest.mark.parametrize("length,layers", [(12, SDXL), (20, SDXL), (17, SD15), (26, SD15)])
def test_lora_block_weight_vectors_with_and_without_their_label(length, layers, rng):
    adapter = adapter_with(layers, rng)
    values = [9.0] + [round(0.1 * (i + 1), 1) for i in range(length - 1)]  # BASE (ignored), then one value per block
    want = dict(zip(LBW_ORDERS[length], values[1:]))
    for spec in (",".join(map(str, values)), "MYPRESET:" + ",".join(map(str, values))):
        w = layer_weights(spec, adapter.targets)
        for name, block in layers.items():
            assert w[name] == (want.get(block, 1.0) if block else 1.0), (spec, name)


def test_flux_vector_is_base_then_double_then_single_blocks(rng):
    adapter = adapter_with(FLUX, rng)
    values = [1.0] + [0.0] * 19 + [0.5] * 38
    w = layer_weights(",".join(map(str, values)), adapter.targets)
    assert {FLUX[n]: v for n, v in w.items()} == {"D0": 0.0, "D1": 0.0, "D18": 0.0, "S0": 0.5, "S37": 0.5, None: 1.0}


@pytest.mark.parametrize("spec,words", [("OUT01", "write entries like OUT01=0.5"), ("OUT01=1, IN04", "no '='"), ("XYZ=1", "names no block"), ("OUT01=a", "not a number"),
                                        ("1,0,1", "has 3 numbers"), ("OUT01=nan", "not a finite"), ("IN04-D7=1", "range")])
def test_bad_specs_get_one_sentence(spec, words, rng):
    with pytest.raises(AdapterError, match=words):
        layer_weights(spec, adapter_with(SDXL, rng).targets)


def test_a_spec_longer_than_any_real_one_is_refused_before_any_work(rng):
    """A million entries took 24 s on 20 layers, and 17 MB of spaces went into the file's metadata (a header its loader refuses)."""
    adapter = adapter_with(FLUX, rng)
    for spec in (",".join(["D0=1"] * 1_000_000), "*=1" + " " * 17_000_000):
        with pytest.raises(AdapterError, match=r"Block weights: the text is [\d,]+ characters"):
            apply_block_weights(adapter, spec)
    longest = ",".join(["0.30000000000000004"] * 58)  # a Flux vector (BASE, D0-D18, S0-S37), every number as long as Python writes it
    assert set(layer_weights(longest, adapter.targets).values()) == {0.30000000000000004, 1.0}


def test_a_character_no_file_can_hold_is_refused_even_where_it_names_no_block(rng):
    """An adapter without blocks never read the entry, and the first save raised UnicodeEncodeError."""
    with pytest.raises(AdapterError, match="block_weights has a character that cannot be written"):
        apply_block_weights(adapter_with(["transformer.proj_out"], rng), "*=0.5, x\ud800=1")


def test_a_repeated_entry_counts_where_it_last_appears_and_the_file_stores_the_spec_normalised(rng):
    adapter = adapter_with(SDXL, rng)
    spec = "out01 = 1,\n *=0 ; OUT01=2.5, " + "IN04=3, " * 200
    weighted, _ = apply_block_weights(adapter, spec)
    assert {SDXL[n]: v for n, v in layer_weights(spec, adapter.targets).items()} == {**{b: 0.0 for b in SDXL.values()}, "OUT01": 2.5, "IN04": 3.0}
    assert weighted.metadata["block_weights"] == "*=0.0, OUT01=2.5, IN04=3.0"
