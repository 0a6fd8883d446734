"""Roles: each role trains exactly the blocks its table entry names, on real models' layer names.

The names are those of the real models (kohya spellings for the UNets,
diffusers' for the DiTs), written out here from the published structures,
not from the table; which ComfyUI weights they are is checked against
ComfyUI's own key map in integration/test_role_targets.py.
"""

import os

import pytest
import torch

from comfyui_qrlora.qrlora_core.errors import AdapterError
from comfyui_qrlora.qrlora_core.training import TrainConfig, select
from comfyui_qrlora.qrlora_core.training import config as settings
from comfyui_qrlora.qrlora_core.training import roles
from comfyui_qrlora.qrlora_core.training.objective import FLOW_TRAINING_STEPS, TRAINING_SHIFT, flow_sigmas
from devkit.host import PACK_ROOT

ATTENTION = ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn1_to_out_0", "attn2_to_q", "attn2_to_k", "attn2_to_v", "attn2_to_out_0",
             "ff_net_0_proj", "ff_net_2")


def unet_names(levels: list[int], middle: int, attention_levels: set) -> list[str]:
    """Kohya names of a UNet's attention + MLP layers (and a resnet layer per block, which no preset picks):
    `levels` transformer blocks per attention; two attentions per down level, three per up level (SD1.5 and SDXL)."""
    names = []
    for side, count in (("down_blocks", 2), ("up_blocks", 3)):
        for level, depth in enumerate(levels if side == "down_blocks" else levels[::-1]):
            for j in range(count):
                names.append(f"lora_unet_{side}_{level}_resnets_{j}_time_emb_proj")
                if (level if side == "down_blocks" else len(levels) - 1 - level) in attention_levels:
                    names += [f"lora_unet_{side}_{level}_attentions_{j}_transformer_blocks_{t}_{layer}" for t in range(depth) for layer in ATTENTION]
    names += [f"lora_unet_mid_block_attentions_0_transformer_blocks_{t}_{layer}" for t in range(middle) for layer in ATTENTION]
    return names


SD15 = unet_names([1, 1, 1, 1], 1, {0, 1, 2})  # down levels 0-2 carry attentions; up_blocks 1-3 mirror them
SDXL = unet_names([0, 2, 10], 10, {1, 2})  # 2 and 10 transformer blocks per attention at the two deeper levels
DIT_LAYERS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "ff.net.0.proj", "ff.net.2")


def dit_names(double: int, single: int) -> list[str]:
    names = [f"transformer.transformer_blocks.{i}.{layer}" for i in range(double) for layer in DIT_LAYERS]
    return names + [f"transformer.single_transformer_blocks.{i}.attn.{p}" for i in range(single) for p in ("to_q", "to_k", "to_v")]


def trained(arch: str, role: str, names: list[str]) -> list[str]:
    """What a role trains among the layers the paper's preset picks (as the session does)."""
    picked = select(names, TrainConfig().target_matcher())
    return roles.role_layers(picked, roles.recipe(arch, role).blocks)


def block_numbers(names, kind: str) -> set:
    prefix = {"D": "transformer.transformer_blocks.", "S": "transformer.single_transformer_blocks."}[kind]
    return {int(n[len(prefix):].split(".")[0]) for n in names if n.startswith(prefix)}


def test_all_is_the_papers_targets_on_any_model():
    for arch, names in (("sd15", SD15), ("sdxl", SDXL), ("flux", dit_names(19, 38)), (None, dit_names(3, 0))):
        assert trained(arch, "all", names) == select(names, TrainConfig().target_matcher())


def test_sd15_content_is_the_down_and_middle_blocks_and_style_every_block():
    paper = select(SD15, TrainConfig().target_matcher())
    content = trained("sd15", "content", SD15)
    assert content == [n for n in paper if n.startswith(("lora_unet_down_blocks_", "lora_unet_mid_block_"))] and len(content) == 70
    assert trained("sd15", "style", SD15) == paper and len(paper) == 160
    # the toy world's shipped content pattern picks the same layers
    toy = TrainConfig(target_preset="custom pattern", target_pattern=r"lora_unet_(down_blocks|mid_block).*(attn[12]_to_(q|k|v|out_0)|ff_net_(0_proj|2))$")
    assert select(SD15, toy.target_matcher()) == content


def test_sdxl_roles_are_b_loras_two_blocks_of_the_first_up_level():
    content, style = trained("sdxl", "content", SDXL), trained("sdxl", "style", SDXL)
    assert content == [n for n in SDXL if n.startswith("lora_unet_up_blocks_0_attentions_0_")] and len(content) == 100
    assert style == [n for n in SDXL if n.startswith("lora_unet_up_blocks_0_attentions_1_")] and len(style) == 100


@pytest.mark.parametrize("double, single, content_double, content_single", [
    (19, 38, range(19), range(10)),  # Flux.1: 57 blocks, the first 29 by depth
    (24, 0, range(12), range(0)),  # SD3 medium / 3.5 medium
    (38, 0, range(19), range(0)),  # SD3.5 large
])
def test_dit_content_is_the_first_half_of_the_blocks_by_depth_and_style_every_block(double, single, content_double, content_single):
    arch = "flux" if single else "sd3"
    names = dit_names(double, single)
    content = trained(arch, "content", names)
    assert block_numbers(content, "D") == set(content_double) and block_numbers(content, "S") == set(content_single)
    assert content == [n for n in names if n in content]  # every layer of those blocks, in order
    assert len(content) == len(content_double) * len(DIT_LAYERS) + len(content_single) * 3
    assert trained(arch, "style", names) == names


def test_a_role_needs_a_known_architecture_unless_it_is_all():
    with pytest.raises(AdapterError, match=r"content role has blocks for SD1.5, SDXL, SD3, Flux only .* set the role to 'all'"):
        roles.recipe(None, "content")
    with pytest.raises(AdapterError, match="'author' is not a role"):
        roles.recipe("sd15", "author")
    assert roles.recipe(None, "all") is roles.PAPER_RECIPE


def test_the_role_narrows_presets_and_a_custom_pattern_replaces_it():
    assert TrainConfig().role == "all" and not TrainConfig().role_picks_blocks
    assert TrainConfig(role="content").role_picks_blocks and TrainConfig(role="style", target_preset="attention only").role_picks_blocks
    assert not TrainConfig(role="content", target_preset="custom pattern", target_pattern="to_q$").role_picks_blocks
    assert settings.limits("role")["options"] == ("all", "content", "style")
    assert TrainConfig(role="style").recorded()["role"] == "style"  # the file says what it was trained for


def test_every_entry_names_its_source_and_evidence_and_the_docs_show_the_table():
    for arch, entries in roles.TABLE.items():
        assert set(entries) == {"content", "style"}, arch
        for r in entries.values():
            assert r.source and r.evidence in (roles.MEASURED, roles.PUBLISHED, roles.EXTRAPOLATED)
    assert roles.TABLE["sdxl"]["content"].evidence == roles.PUBLISHED and roles.TABLE["flux"]["content"].evidence == roles.EXTRAPOLATED
    with open(os.path.join(PACK_ROOT, "docs", "roles.md"), encoding="utf-8") as f:
        assert roles.table_markdown() in f.read()


# ------------------------------------------------------------ SD3's training sigmas


def diffusers_training_sigmas(shift: float) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)'s sigmas, highest first, in float64,
    as diffusers builds them: timesteps 1000 ... 1, sigma = t / 1000, then shift·sigma / (1 + (shift - 1)·sigma)."""
    t = torch.arange(FLOW_TRAINING_STEPS, 0, -1, dtype=torch.float64)
    sigma = t / FLOW_TRAINING_STEPS
    return shift * sigma / (1 + (shift - 1) * sigma)


@pytest.mark.parametrize("arch, shift", [("sd3", 3.0), ("flux", 1.0)])
def test_flow_sigmas_are_diffusers_training_draw_for_each_architecture(arch, shift, rng):
    """u uniform -> index floor(u·1000) into the scheduler's sigmas (weighting 'none'), as the DreamBooth scripts draw."""
    assert TRAINING_SHIFT.get(arch, 1.0) == shift
    u = torch.cat([torch.rand(4096, generator=rng, dtype=torch.float64), torch.tensor([0.0, 0.5, 1 - 1e-12], dtype=torch.float64)])
    expected = diffusers_training_sigmas(shift)[(u * FLOW_TRAINING_STEPS).long()]
    assert torch.allclose(flow_sigmas(u, shift), expected, rtol=0, atol=1e-15)
    ours = flow_sigmas(torch.tensor([0.0, 0.5, 1 - 1e-12], dtype=torch.float64), shift).tolist()
    assert ours == pytest.approx([1.0, 0.75, 0.003 / 1.002] if shift == 3.0 else [1.0, 0.5, 0.001], abs=1e-15)
    if shift == 3.0:  # towards high noise: the median sigma is 0.75, not 0.5
        assert float(flow_sigmas(u[:4096], shift).median()) == pytest.approx(0.75, abs=0.02)
