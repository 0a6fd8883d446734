"""Mix Grid through ComfyUI's real ModelPatcher and sampler, in-process on small models.

A row of the grid's batch must be what the model patched by the pack's own
path (Merge ΔR at the cell's weights, then Apply to Model) gives for that
sample alone: on Flux (fused qkv and linear1 row slices) and SD1.5 (1x1
convolutions), for batches holding the grid twice (cond and uncond), and
after sampling, for a deterministic, an ancestral and an SDE sampler
(Brownian-tree noise): each cell draws the noise a batch of one draws.
"""

import pytest
import torch

from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget, merge
from comfyui_qrlora.qrlora_core.decompose import decompose
from devkit import models

RANK = 4
WEIGHTS = [(0.0, 0.0), (1.5, 0.0), (0.0, 2.0), (1.5, 2.0), (-1.0, 1.0)]
FLUX_H = 256
TARGETS = {  # adapter layer name -> (ComfyUI key, first row, rows), the style adapter has every layer, the content adapter the first two
    "flux": {
        "transformer.transformer_blocks.0.attn.to_q": ("double_blocks.0.img_attn.qkv.weight", 0, FLUX_H),
        "transformer.single_transformer_blocks.0.attn.to_k": ("single_blocks.0.linear1.weight", FLUX_H, FLUX_H),
        "transformer.transformer_blocks.0.attn.to_v": ("double_blocks.0.img_attn.qkv.weight", 2 * FLUX_H, FLUX_H),
        "transformer.transformer_blocks.1.ff.net.2": ("double_blocks.1.img_mlp.2.weight", 0, None),
    },
    "sd15": {
        "lora_unet_down_blocks_0_attentions_0_proj_in": ("input_blocks.1.1.proj_in.weight", 0, None),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": ("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 0, None),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2": ("middle_block.1.transformer_blocks.0.ff.net.2.weight", 0, None),
        "lora_unet_mid_block_attentions_0_proj_out": ("middle_block.1.proj_out.weight", 0, None),
    },
}


def adapters(model, arch, generator) -> tuple[QRLoRA, QRLoRA]:
    """A content and a style adapter on the model's own bases; the style adapter's last layer has a basis of its own."""
    state = model.model.diffusion_model.state_dict()
    content, style = {}, {}
    for i, (name, (key, start, length)) in enumerate(TARGETS[arch].items()):
        weight = state[key] if length is None else state[key][start:start + length]
        q = decompose(weight.reshape(weight.shape[0], -1), RANK).q
        if i < 2:
            content[name] = QRTarget(q=q, delta_r=torch.randn(RANK, weight[0].numel(), generator=generator))
        own = torch.linalg.qr(torch.randn(q.shape, generator=generator))[0] if i == 3 else q
        style[name] = QRTarget(q=own, delta_r=torch.randn(RANK, weight[0].numel(), generator=generator))
    return (QRLoRA(content, rank=RANK, alpha=2.0, format="native", source="content"),
            QRLoRA(style, rank=RANK, alpha=8.0, format="native", source="style"))


def patched_with(model, content, style, a, b):
    from comfyui_qrlora.nodes.apply import QRLoRAApply

    mixed, _ = merge([content, style], [a, b])
    return QRLoRAApply.execute(model=model, qr_lora=mixed, strength=1.0).args[0]


def model_inputs(arch, rows, generator) -> tuple:
    if arch == "flux":
        return (torch.randn(rows, 16, 8, 8, generator=generator), torch.tensor([0.6] * rows),
                {"c_crossattn": torch.randn(rows, 8, 4096, generator=generator), "y": torch.randn(rows, 768, generator=generator), "guidance": torch.tensor([3.5] * rows)})
    return torch.randn(rows, 4, 8, 8, generator=generator), torch.tensor([400.0] * rows), {"c_crossattn": torch.randn(rows, 8, 768, generator=generator)}


def run_model(patcher, x, t, extra, transformer_options=None):
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    with torch.inference_mode():
        return patcher.model.apply_model(x, t, transformer_options=transformer_options or {}, **extra)


@pytest.mark.parametrize("arch", ["flux", "sd15"])
def test_each_row_gets_the_output_of_the_model_patched_with_its_cells_mix(arch, rng, pack):
    from comfyui_qrlora.integration.grid import GridMix

    model = models.patcher(arch)
    content, style = adapters(model, arch, rng)
    mix = GridMix(model, [content, style], WEIGHTS)
    grid_model = mix.patched(model)
    copies = 2  # cond and uncond, concatenated whole as calc_cond_batch does
    x, t, extra = model_inputs(arch, copies * len(WEIGHTS), rng)
    out = run_model(grid_model, x, t, extra, {"wrappers": grid_model.wrappers})
    plain = run_model(model, x, t, extra)
    for row in range(len(x)):
        a, b = WEIGHTS[row % len(WEIGHTS)]
        one = {k: v[row:row + 1] for k, v in extra.items()}
        expected = run_model(patched_with(model, content, style, a, b), x[row:row + 1], t[row:row + 1], one)
        torch.testing.assert_close(out[row:row + 1], expected, rtol=1e-4, atol=1e-5, msg=f"row {row}, cell {(a, b)}")
        if (a, b) != (0.0, 0.0):
            assert (expected - plain[row:row + 1]).abs().max() > 1e-3, "the cell's mix changes nothing: the test would prove nothing"
    assert not mix._hooks, "loading another patcher of the model takes the grid's hooks off"


@pytest.mark.parametrize("sampler_name", ["euler", "euler_ancestral", "dpmpp_2m_sde"])
def test_a_sampled_grid_is_the_separately_patched_runs_of_its_cells(sampler_name, rng, pack):
    import comfy.sample

    from comfyui_qrlora.integration import grid

    model = models.patcher("sd15")
    content, style = adapters(model, "sd15", rng)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    positive = [[torch.randn(1, 8, 768, generator=rng), {}]]
    negative = [[torch.randn(1, 8, 768, generator=rng), {}]]
    settings = {"seed": 7, "steps": 4, "cfg": 3.0, "sampler_name": sampler_name, "scheduler": "normal"}
    samples = grid.sample(grid.GridMix(model, [content, style], WEIGHTS), model, positive, negative, latent, **settings)
    assert samples.shape == (len(WEIGHTS), 4, 8, 8)
    for i, (a, b) in enumerate(WEIGHTS):
        patched = patched_with(model, content, style, a, b)
        noise = comfy.sample.prepare_noise(latent["samples"], settings["seed"])
        alone = comfy.sample.sample(patched, noise, settings["steps"], settings["cfg"], sampler_name, settings["scheduler"],
                                    positive, negative, latent["samples"], seed=settings["seed"])
        torch.testing.assert_close(samples[i:i + 1], alone, rtol=1e-4, atol=1e-4, msg=f"cell {(a, b)}")
    assert (samples[1:] - samples[:1]).abs().amax(dim=(1, 2, 3)).min() > 1e-2, "every mix differs from the plain model's image"


@pytest.mark.parametrize("sampler_name", ["euler", "dpmpp_sde", "dpmpp_2m_sde"])
def test_a_grid_at_denoise_0_is_what_ksampler_gives_there_for_every_cell(sampler_name, rng, pack):
    """Nothing to sample (no sigmas): the SDE samplers' Brownian-tree set-up took the least of no sigmas and raised."""
    import comfy.sample

    from comfyui_qrlora.integration import grid

    model = models.patcher("sd15")
    content, style = adapters(model, "sd15", rng)
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=rng)}
    positive = [[torch.randn(1, 8, 768, generator=rng), {}]]
    negative = [[torch.randn(1, 8, 768, generator=rng), {}]]
    settings = {"seed": 7, "steps": 4, "cfg": 3.0, "sampler_name": sampler_name, "scheduler": "normal", "denoise": 0.0}
    samples = grid.sample(grid.GridMix(model, [content, style], WEIGHTS), model, positive, negative, latent, **settings)
    noise = comfy.sample.prepare_noise(latent["samples"], settings["seed"])
    alone = comfy.sample.sample(model, noise, settings["steps"], settings["cfg"], sampler_name, settings["scheduler"],
                                positive, negative, latent["samples"], denoise=0.0, seed=settings["seed"])
    assert torch.equal(samples, alone.repeat(len(WEIGHTS), 1, 1, 1))
