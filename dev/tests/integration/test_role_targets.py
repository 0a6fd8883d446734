"""Roles and the per-architecture objective inside ComfyUI, in this process (no server).

Which model a role sees is what ComfyUI's loader detected (its model
config); which weights the role's blocks are is ComfyUI's own key map;
the SD3 training sigmas are checked on a real (small) SD3 ModelPatcher
against diffusers' scheduler written out in float64.
"""

import pytest
import torch

from devkit import models

from test_train_inprocess import config, inputs, session

SDXL_UNET = {  # SDXL's UNet as ComfyUI's model detection reads it from the published checkpoint
    "model_channels": 320, "use_linear_in_transformer": True, "transformer_depth": [0, 0, 2, 2, 10, 10], "context_dim": 2048,
    "adm_in_channels": 2816, "use_temporal_attention": False, "in_channels": 4, "out_channels": 4, "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
    "use_spatial_transformer": True, "legacy": False, "num_heads": -1, "num_head_channels": 64, "image_size": 32, "dims": 2,
}


@pytest.mark.parametrize("arch", models.ARCHITECTURES)
def test_the_architecture_is_what_comfyuis_loader_detected(pack, arch):
    from comfyui_qrlora.integration.training.session import architecture

    assert architecture(models.patcher(arch)) == arch


def test_sdxl_roles_land_on_b_loras_blocks_in_comfyuis_key_map(pack):
    """B-LoRA's up_blocks.0.attentions.0 / .1 are ComfyUI's output_blocks.0.1 / 1.1, and those are all the roles train."""
    import comfy.utils
    from comfyui_qrlora.qrlora_core.training import TrainConfig, roles, select

    to_comfy = {f"lora_unet_{k[:-len('.weight')].replace('.', '_')}": v
                for k, v in comfy.utils.unet_to_diffusers(SDXL_UNET).items() if k.endswith(".weight")}
    picked = select(list(to_comfy), TrainConfig().target_matcher())
    for role, block in (("content", "output_blocks.0.1."), ("style", "output_blocks.1.1.")):
        trained = roles.role_layers(picked, roles.recipe("sdxl", role).blocks)
        assert {to_comfy[n] for n in trained} == {to_comfy[n] for n in picked if to_comfy[n].startswith(block)}, role
        assert len(trained) == 100  # 10 transformer blocks x (2 attentions x 4 + 2 MLP)


@pytest.mark.parametrize("arch, role, blocks", [
    ("sd15", "content", ("lora_unet_down_blocks_", "lora_unet_mid_block_")),
    ("flux", "content", ("transformer.transformer_blocks.",)),  # 2 double + 2 single blocks: the first half is the double ones
    ("sd3", "content", ("transformer.transformer_blocks.0.",)),
])
def test_the_trainer_trains_the_roles_blocks_and_says_so(pack, arch, role, blocks):
    from comfyui_qrlora.integration.training.session import choose_targets

    model = models.patcher(arch)
    everything, _ = choose_targets(model, config())
    chosen, notes = choose_targets(model, config(role=role))
    assert list(chosen) == [n for n in everything if n.startswith(blocks)] and 0 < len(chosen) < len(everything)
    assert any(f"Role {role} on " in note and "layers in blocks" in note for note in notes), notes
    custom, _ = choose_targets(model, config(role=role, target_preset="custom pattern", target_pattern="to_q$"))
    assert list(custom) == [n for n in everything if n.endswith("to_q")]  # a custom pattern replaces the role's blocks
    assert list(choose_targets(model, config(role="style"))[0]) == list(everything)


def test_sd3_trains_on_diffusers_shifted_sigmas_and_flux_on_uniform_ones(pack, folders, rng):
    from comfyui_qrlora.qrlora_core.training.step_loop import Draws

    for arch, shift in (("sd3", 3.0), ("flux", 1.0)):
        latents, positive = inputs(arch, rng, images=2) if arch == "flux" else sd3_inputs(rng)
        seed = int(torch.randint(0, 2**31, (1,), generator=rng))
        run = session(models.patcher(arch), latents, positive, seed=seed, batch_size=2)
        with run, torch.no_grad():
            sigma = torch.cat([b.sigma for b in run.draw(Draws(seed))]).double()
            replay = Draws(seed)
            replay.images(run.buckets, 2)
            u = replay.uniform(2).double()
        s = 1 - torch.floor(u * 1000) / 1000  # the scheduler's unshifted training sigma at index floor(u * 1000)
        expected = shift * s / (1 + (shift - 1) * s)
        assert torch.allclose(sigma.sort().values, expected.sort().values, rtol=1e-6, atol=0), (arch, sigma, expected)


def sd3_inputs(generator, images=2):
    latent = torch.randn(images, 16, 8, 8, generator=generator)
    cond = [[torch.randn(1, 8, 4096, generator=generator), {"pooled_output": torch.randn(1, 2048, generator=generator)}]]
    return [{"samples": latent}], [cond]


def test_train_py_takes_the_role_as_a_flag(pack):
    from comfyui_qrlora.integration.training.cli import config_from, parser

    assert config_from(parser().parse_args(["--role", "content"])).role == "content"
    assert config_from(parser().parse_args([])).role == "all"
    with pytest.raises(SystemExit):
        parser().parse_args(["--role", "author"])
