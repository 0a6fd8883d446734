"""Training inside ComfyUI's real ModelPatcher, in this process.

What the server test cannot reach deterministically or cheaply: Flux's fused
matrices (no small Flux file is detected by the stock loader), the exact
step at which an interrupt or a diverging loss stops a run, and the state of
the shared model's layers afterwards. Interrupts and progress go through
ComfyUI's own hooks (`comfy.utils` progress hook, the interrupt flag the
server's /interrupt sets); nothing of ComfyUI is replaced.
"""

import glob
import os

import pytest
import torch

from devkit import models

STEPS = 6


@pytest.fixture
def progress_hook():
    """Install a ComfyUI progress hook for one test (the server installs its own)."""
    import comfy.model_management
    import comfy.utils

    def install(function):
        comfy.utils.set_progress_bar_global_hook(function)

    yield install
    comfy.utils.set_progress_bar_global_hook(None)
    comfy.model_management.interrupt_current_processing(False)


def _caption(arch, generator, tokens=8):
    """One [embedding, options] caption of `tokens` text tokens."""
    if arch == "flux":
        return [torch.randn(1, tokens, 4096, generator=generator), {"pooled_output": torch.randn(1, 768, generator=generator), "guidance": 3.5}]
    return [torch.randn(1, tokens, 768, generator=generator), {}]


def inputs(arch, generator, images=2):
    latent = torch.randn(images, 16 if arch == "flux" else 4, 8, 8, generator=generator)
    return [{"samples": latent}], [[_caption(arch, generator)]]


def settings(**overrides):
    values = {
        "rank": 4, "alpha": 0.0, "steps": STEPS, "learning_rate": 1e-2, "batch_size": 1, "grad_accumulation": 1, "seed": 3,
        "optimizer": "AdamW", "training_dtype": "fp32", "gradient_checkpointing": False,
        "target_preset": "attention + MLP (paper)", "target_pattern": "", "triangular": True,
        "checkpoint_every": 0, "filename_prefix": "t/run", "trigger_words": "",
    }
    values.update(overrides)
    return {k: [v] for k, v in values.items()}


def train(pack, model, latents, positive, **overrides):
    from comfyui_qrlora.nodes.train import QRLoRATrain

    return QRLoRATrain.execute(model=[model], latents=latents, positive=positive, **settings(**overrides))


def forward(patcher, arch, generator):
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    if arch == "flux":
        x = torch.randn(1, 16, 8, 8, generator=generator)
        extra = {"c_crossattn": torch.randn(1, 8, 4096, generator=generator), "y": torch.randn(1, 768, generator=generator), "guidance": torch.tensor([3.5])}
        t = torch.tensor([0.6])
    else:
        x = torch.randn(1, 4, 8, 8, generator=generator)
        extra = {"c_crossattn": torch.randn(1, 8, 768, generator=generator)}
        t = torch.tensor([400.0])
    return patcher.model.apply_model(x, t, **extra)


def config(**overrides):
    from comfyui_qrlora.qrlora_core.training import TrainConfig

    return TrainConfig(**{k: v[0] for k, v in settings(**overrides).items()})


def session(model, latents, positive, **overrides):
    from comfyui_qrlora.integration.training.session import TrainingSession

    return TrainingSession(model, config(**overrides), latents, positive)


@pytest.mark.parametrize("arch", ["flux", "sd15"])
def test_wrapped_model_is_the_base_at_step_zero_and_only_delta_r_learns(pack, folders, arch, rng):
    base = models.patcher(arch)
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    reference = forward(base, arch, torch.Generator().manual_seed(seed))
    latents, positive = inputs(arch, rng)
    run = session(base, latents, positive)
    with run:
        fused = [w for w in run.wrappers.values() if len(w.targets) > 1]
        assert bool(fused) == (arch == "flux")  # Flux: q, k, v share img_attn.qkv / linear1
        with torch.enable_grad():
            out = forward(run.patcher, arch, torch.Generator().manual_seed(seed))
            assert torch.equal(out, reference)  # ΔR = 0: exactly the base model
            out.square().mean().backward()
        assert all(p.grad is None for p in run.patcher.model.parameters())
        grads = [layer.delta_r.grad for layer in run.targets.layers.values()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
        assert sum(g.numel() for g in grads) == sum(4 * layer.in_features for layer in run.targets.layers.values()) == run.targets.trainable_count()
    assert not any(getattr(m, "weight_function", None) for m in base.model.modules())
    assert not any("forward" in vars(m) for m in base.model.modules())  # rewrites and checkpointing taken off
    assert torch.equal(forward(base, arch, torch.Generator().manual_seed(seed)), reference)


def _loss_and_gradients(run, loss) -> tuple:
    """(loss(), name -> its ΔR gradient in float64), from cleared gradients."""
    for p in run.targets.parameters():
        p.grad = None
    with torch.enable_grad():
        value = loss()
        value.backward()
    return float(value.detach()), {n: layer.delta_r.grad.double().clone() for n, layer in run.targets.layers.items()}


def test_flux_gradients_are_right_with_and_without_checkpointing(pack, folders, rng):
    """ComfyUI's Flux blocks update their residual stream in place; the trainer must still get true gradients.

    References: the same loss without checkpointing, and central finite
    differences of the loss along a random direction, in float64 arithmetic
    on the loss (the model runs in float32).
    """
    from comfyui_qrlora.qrlora_core.training.step_loop import Draws

    base = models.patcher("flux")
    latents, positive = inputs("flux", rng)
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    gradients, runs = {}, {}
    for checkpointing in (False, True):
        run = session(base, latents, positive, gradient_checkpointing=checkpointing)
        with torch.no_grad():
            for layer in run.targets.layers.values():
                layer.delta_r.copy_(0.05 * torch.randn(layer.delta_r.shape, generator=torch.Generator().manual_seed(seed)))
        with run:
            batch = run.draw(Draws(seed))[0]
            gradients[checkpointing] = _loss_and_gradients(run, lambda: run.loss(batch))[1]
            assert bool(run.checkpointed) == checkpointing
            if not checkpointing:
                direction = {n: torch.randn(l.delta_r.shape, generator=rng) for n, l in run.targets.layers.items()}
                analytic = sum(float((gradients[False][n] * torch.triu(direction[n]).double()).sum()) for n in direction)
                eps = 1e-3
                with torch.no_grad():
                    for n, l in run.targets.layers.items():
                        l.delta_r += eps * direction[n]
                    up = float(run.loss(batch).double())
                    for n, l in run.targets.layers.items():
                        l.delta_r -= 2 * eps * direction[n]
                    down = float(run.loss(batch).double())
                assert analytic == pytest.approx((up - down) / (2 * eps), rel=2e-2)
    for name, g in gradients[False].items():
        assert torch.allclose(gradients[True][name], g, rtol=1e-4, atol=1e-7 * g.abs().max()), name


def _raw_flux(run, x_t, sigma, caption, guidance):
    embedding, options = caption
    n = x_t.shape[0]
    model = run.patcher.model.diffusion_model
    return model(x_t, sigma, context=embedding.expand(n, -1, -1), y=options["pooled_output"].expand(n, -1), guidance=torch.full_like(sigma, guidance)).float()


def test_flow_loss_is_the_velocity_mse_of_the_reference(pack, folders, rng):
    """The loss the trainer reports for Flux is |v - (noise - x0)|² at x_t = (1 - sigma) x0 + sigma noise, sigma in (0, 1], guidance 1."""
    from comfyui_qrlora.qrlora_core.training.step_loop import Draws

    latents, positive = inputs("flux", rng, images=3)
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    model = models.patcher("flux")
    run = session(model, latents, positive, batch_size=2, seed=seed)
    with run, torch.no_grad():
        batches = run.draw(Draws(seed))
        assert len(batches) == 1 and len(batches[0].images) == 2
        b = batches[0]
        assert torch.all((b.sigma > 0) & (b.sigma <= 1))
        x_t = (1 - b.sigma.view(-1, 1, 1, 1)) * b.x0 + b.sigma.view(-1, 1, 1, 1) * b.noise
        velocity = _raw_flux(run, x_t, b.sigma, positive[0][0], guidance=1.0)
        expected = float(((velocity - (b.noise - b.x0)) ** 2).mean())
        assert float(run.loss(b)) == pytest.approx(expected, rel=1e-5)
        assert torch.equal(b.x0, torch.cat([model.model.process_latent_in(latents[0]["samples"][i : i + 1]) for i in b.images]))
    # the loss of step 1 (before any update) is that of the run's first draw
    reported = train(pack, model, latents, positive, steps=1, batch_size=2, seed=seed).args[2]["loss"]
    assert reported[0] == pytest.approx(expected, rel=1e-5)


def test_epsilon_loss_is_the_dreambooth_noise_mse(pack, folders, rng):
    """SD1.5: |eps_pred - noise|² at x_t = sqrt(a) x0 + sqrt(1 - a) noise, a = alphas_cumprod at a uniform integer timestep."""
    from comfyui_qrlora.qrlora_core.training.step_loop import Draws

    latents, positive = inputs("sd15", rng)
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    model = models.patcher("sd15")
    run = session(model, latents, positive, seed=seed)
    with run, torch.no_grad():
        b = run.draw(Draws(seed))[0]
        # SD1.5's training schedule as diffusers' DDPMScheduler defines it ("scaled_linear" betas)
        alphas_cumprod = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        t = int(torch.argmin((sigmas - float(b.sigma)).abs()))
        assert float(sigmas[t]) == pytest.approx(float(b.sigma), rel=1e-5)  # an integer timestep's sigma
        a = float(alphas_cumprod[t])
        x_t = a**0.5 * b.x0 + (1 - a) ** 0.5 * b.noise
        eps = run.patcher.model.diffusion_model(x_t, torch.tensor([float(t)]), context=positive[0][0][0]).float()
        expected = float(((eps - b.noise) ** 2).mean())
        assert float(run.loss(b)) == pytest.approx(expected, rel=1e-4)
    reported = train(pack, model, latents, positive, steps=1, seed=seed).args[2]["loss"]
    assert reported[0] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("arch", ["flux", "sd15"])
def test_comfyui_objective_option_compares_x0_on_the_sampling_schedule(pack, folders, arch, rng):
    from comfyui_qrlora.qrlora_core.training.objective import COMFYUI
    from comfyui_qrlora.qrlora_core.training.step_loop import Draws

    latents, positive = inputs(arch, rng)
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    model = models.patcher(arch)
    run = session(model, latents, positive, seed=seed, objective=COMFYUI)
    with run, torch.no_grad():
        draws = Draws(seed)
        b = run.draw(draws)[0]
        replay = Draws(seed)
        replay.images(run.buckets, 1)
        u = float(replay.uniform(1)[0])
        sampling = run.patcher.model.model_sampling
        assert float(b.sigma[0]) == pytest.approx(float(sampling.percent_to_sigma(u)), rel=1e-6)  # the (shifted) schedule
        s = b.sigma.view(-1, 1, 1, 1)
        if arch == "flux":
            x_t = (1 - s) * b.x0 + s * b.noise
            denoised = x_t - s * _raw_flux(run, x_t, b.sigma, positive[0][0], guidance=1.0)
        else:
            x = b.x0 + s * b.noise
            t = sampling.timestep(b.sigma).float()
            denoised = x - s * run.patcher.model.diffusion_model(x / (1 + s**2) ** 0.5, t, context=positive[0][0][0]).float()
        assert float(run.loss(b)) == pytest.approx(float(((denoised - b.x0) ** 2).mean()), rel=1e-4)
    out = train(pack, model, latents, positive, steps=2, objective=COMFYUI)
    assert all(torch.isfinite(torch.tensor(out.args[2]["loss"]))) and out.args[0].metadata["training"]["objective"] == COMFYUI


def test_flux_trains_at_guidance_one_unless_told_otherwise(pack, folders, rng):
    import comfy.patcher_extension

    seen = []

    def record(executor, *args, **kwargs):
        guidance = kwargs.get("guidance", args[4] if len(args) > 4 else None)
        seen.append(guidance.flatten().tolist())
        return executor(*args, **kwargs)

    model = models.patcher("flux")
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test.guidance", record)
    latents, positive = inputs("flux", rng)  # the caption's conditioning says guidance 3.5
    train(pack, model, latents, positive, steps=1, grad_accumulation=2)
    assert seen and all(g == [1.0] for g in seen), seen
    seen.clear()
    train(pack, model, latents, positive, steps=1, guidance=0.0)  # 0: keep the caption's
    assert seen and all(g == [3.5] for g in seen), seen


def test_flux_slices_are_decomposed_per_published_module(pack, folders, rng):
    from comfyui_qrlora.qrlora_core.decompose import decompose, subspace_error

    model = models.patcher("flux")
    latents, positive = inputs("flux", rng)
    out = train(pack, model, latents, positive, steps=2)
    adapter, patched, loss_map, steps = out.args
    assert steps == 2 and len(loss_map["loss"]) == 2
    names = set(adapter.targets)
    assert {"transformer.transformer_blocks.0.attn.to_k", "transformer.single_transformer_blocks.1.attn.to_v",
            "transformer.transformer_blocks.1.ff_context.net.2"} <= names
    assert not any("proj_mlp" in n or "norm" in n for n in names)
    qkv = model.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
    k_rows = qkv[256:512].detach()
    assert subspace_error(adapter.targets["transformer.transformer_blocks.0.attn.to_k"].q, decompose(k_rows, 4).q) < 1e-4
    assert any(t.delta_r.any() for t in adapter.targets.values())


@pytest.mark.parametrize("stop_after", [1, 3, STEPS - 1])
def test_interrupt_keeps_the_steps_done(pack, folders, progress_hook, rng, stop_after):
    import comfy.model_management

    def press_stop(value, total, preview, node_id=None):
        if total == STEPS and value == stop_after:
            comfy.model_management.interrupt_current_processing(True)

    progress_hook(press_stop)
    latents, positive = inputs("sd15", rng)
    with pytest.raises(comfy.model_management.InterruptProcessingException) as stop:
        train(pack, models.patcher("sd15"), latents, positive, filename_prefix="t/stopped", checkpoint_every=2)
    assert str(stop.value) == f"Stopped at step {stop_after}; kept t/stopped_00001_step{stop_after:06}.safetensors."  # what the page shows
    files = sorted(os.path.basename(p) for p in glob.glob(str(folders / "loras" / "t" / "*")))
    # checkpoints every 2 steps, plus what was trained saved on the way out; nothing partial
    expected = {f"stopped_00001_step{s:06}.safetensors" for s in [*range(2, stop_after + 1, 2), stop_after]}
    assert files == sorted(expected)
    from comfyui_qrlora.qrlora_core.formats import load_adapter

    kept = load_adapter(str(folders / "loras" / "t" / f"stopped_00001_step{stop_after:06}.safetensors"))
    assert int(kept.metadata["steps"]) == stop_after and any(t.delta_r.any() for t in kept.targets.values())


def test_diverging_loss_stops_with_advice_and_keeps_the_last_good_state(pack, folders, progress_hook, rng):
    from comfyui_qrlora.qrlora_core.errors import AdapterError
    from comfyui_qrlora.qrlora_core.formats import load_adapter

    model = models.patcher("sd15")
    untargeted = model.model.diffusion_model.out[2].weight  # the last convolution, not a QR-LoRA target

    def break_the_model_after_step_2(value, total, preview, node_id=None):
        if total == STEPS and value == 2:
            with torch.no_grad():
                untargeted.fill_(float("nan"))

    progress_hook(break_the_model_after_step_2)
    latents, positive = inputs("sd15", rng)
    with pytest.raises(AdapterError, match=r"Training stopped at step 3: the loss became nan .*\(step 2\) is in t/nan_00001_step000002.safetensors. Lower the learning rate"):
        train(pack, model, latents, positive, filename_prefix="t/nan", checkpoint_every=5)
    kept = load_adapter(str(folders / "loras" / "t" / "nan_00001_step000002.safetensors"))
    assert all(torch.isfinite(t.delta_r).all() for t in kept.targets.values()) and int(kept.metadata["steps"]) == 2
    assert not any(getattr(m, "weight_function", None) for m in model.model.modules())  # cleaned up on the error path too


def test_continuing_an_adapter_keeps_its_basis_and_counts_steps(pack, folders, rng):
    model = models.patcher("sd15")
    latents, positive = inputs("sd15", rng)
    first = train(pack, model, latents, positive, steps=2).args[0]
    from comfyui_qrlora.nodes.train import QRLoRATrain

    out = QRLoRATrain.execute(model=[model], latents=latents, positive=positive, qr_lora=[first], **settings(steps=3, rank=8))
    second, _, _, steps = out.args
    assert steps == 5 and second.rank == 4  # the adapter's rank, not the input's
    assert set(second.targets) == set(first.targets)
    for name, t in first.targets.items():
        assert torch.equal(second.targets[name].q, t.q)
    assert any(not torch.equal(second.targets[n].delta_r, t.delta_r) for n, t in first.targets.items())
    assert "Continuing" in out.ui["text"][0]


def test_images_of_different_sizes_train_one_at_a_time_in_bf16(pack, folders, rng):
    model = models.patcher("sd15")
    latents = [{"samples": torch.randn(1, 4, 8, 8, generator=rng)}, {"samples": torch.randn(1, 4, 8, 12, generator=rng)}]
    caption = [[torch.randn(1, 8, 768, generator=rng), {}]]
    out = train(pack, model, latents, [caption], steps=2, batch_size=2, grad_accumulation=2, training_dtype="bf16", gradient_checkpointing=True)
    adapter, _, loss_map, steps = out.args
    assert steps == 2 and len(loss_map["loss"]) == 2 and all(torch.isfinite(torch.tensor(loss_map["loss"])))
    assert any(t.delta_r.any() for t in adapter.targets.values())
    assert all(t.delta_r.dtype == torch.float32 for t in adapter.targets.values())  # ΔR is kept in fp32 whatever the training dtype
    from comfyui_qrlora.qrlora_core.errors import AdapterError

    with pytest.raises(AdapterError, match=r"3 captions \(conditionings\) for 2 training images"):
        train(pack, model, latents, [caption, caption, caption], steps=1)


@pytest.mark.parametrize("arch", ["flux", "sd15"])
def test_caption_groups_share_one_forward_with_the_loss_and_gradients_of_one_forward_each(pack, folders, arch, rng):
    """Captioned one per image, a micro-batch runs one forward, not one per caption, with the loss and ΔR gradients
    of one forward per caption; text of another length keeps a forward of its own (the joint attention of Flux
    and SD3 is not the same with text padded by repetition, as ComfyUI pads it)."""
    from comfyui_qrlora.integration.training.session import _one_forward
    from comfyui_qrlora.qrlora_core.training.step_loop import Draws

    latents, _ = inputs(arch, rng, images=4)
    shared = _caption(arch, rng)
    positive = [[shared], [shared], [_caption(arch, rng)], [_caption(arch, rng)]]  # caption groups of 2, 1 and 1
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    run = session(models.patcher(arch), latents, positive, batch_size=4, seed=seed)
    with run:
        with torch.no_grad():  # a ΔR away from zero, so the gradients depend on it too
            for layer in run.targets.layers.values():
                layer.delta_r.copy_(0.05 * torch.randn(layer.delta_r.shape, generator=torch.Generator().manual_seed(seed)))
        forwards = []
        hook = run.patcher.model.diffusion_model.register_forward_pre_hook(lambda module, args: forwards.append(module))
        try:
            batches = run.draw(Draws(seed))
            assert sorted(len(b.images) for b in batches) == [1, 1, 2]
            expected, expected_grads = _loss_and_gradients(run, lambda: sum(run.loss(b) * len(b.images) for b in batches) / 4)
            assert len(forwards) == 3
            loss, grads = _loss_and_gradients(run, lambda: run.micro_loss(Draws(seed)))
            assert len(forwards) == 4
        finally:
            hook.remove()
    assert loss == pytest.approx(expected, rel=1e-5)
    for name, g in expected_grads.items():  # per layer, relative to its norm: other batch shapes round differently
        assert float((grads[name] - g).norm()) <= 1e-4 * float(g.norm()), name
    longer = [[shared], [shared], [_caption(arch, rng, tokens=12)], [_caption(arch, rng)]]
    run = session(models.patcher(arch), latents, longer, batch_size=4, seed=seed)
    with run:
        batches = run.draw(Draws(seed))
        assert len(batches) == 3 and _one_forward(batches) is batches


def test_training_twice_after_a_load_outside_inference_mode(pack, folders, rng):
    """A first load to the GPU inside Train (outside inference mode) swaps the .data of weights made in inference
    mode: they then have no version counter. The second training of that model must still run, and leave it as it was."""
    with torch.inference_mode():  # as the executor runs the loader
        base = models.patcher("sd15")
    for p in base.model.parameters():
        p.data = p.data.clone()  # what Module.to does when it moves a weight, here outside inference mode
    with pytest.raises(RuntimeError):
        next(base.model.parameters()).view(-1)  # the state the GPU run was in
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    latents, positive = inputs("sd15", rng)
    for run in range(2):
        adapter = train(pack, base, latents, positive, steps=2, filename_prefix=f"t/twice{run}")[0]
        assert adapter.targets and all(t.delta_r.abs().sum() > 0 for t in adapter.targets.values())
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())


@pytest.mark.parametrize("arch", ["flux", "sd15"])
def test_every_role_trains_every_noise_level_unless_a_range_is_set(pack, folders, arch, rng):
    """The roles pick blocks only (the toy world's tuning did not pick the content-high / style-low noise split);
    noise_min / noise_max narrow what the trainer draws, whatever the role."""
    latents, positive = inputs(arch, rng)
    model = models.patcher(arch)
    uniform = torch.rand(512, generator=rng)
    drawn = {}
    for name, overrides in {"content": {"role": "content"}, "style": {"role": "style"}, "all": {"role": "all"},
                            "content, set": {"role": "content", "noise_min": 0.5, "noise_max": 1.0},
                            "style, set": {"role": "style", "noise_min": 0.0, "noise_max": 0.5}}.items():
        run = session(model, latents, positive, **overrides)
        with run:
            drawn[name] = run.sigmas(uniform)
            assert "noise levels" not in " ".join(run.notes)
    assert torch.equal(drawn["content"], drawn["all"]) and torch.equal(drawn["style"], drawn["all"])
    assert float(drawn["content, set"].min()) >= float(drawn["style, set"].max()), "a set range is what is drawn"
    assert float(drawn["all"].min()) < float(drawn["style, set"].max()) and float(drawn["all"].max()) > float(drawn["content, set"].min())


@pytest.mark.parametrize("resolution", [100_000_000, -64, 0])
def test_train_py_refuses_a_resolution_outside_the_nodes_range_before_loading_anything(pack, tmp_path, capsys, resolution):
    """The node's widget holds 64 to 4096; --resolution 1e8 spent memory resizing before anything checked it, -64 was taken."""
    from comfyui_qrlora.integration.training.cli import EXIT_BAD_INPUT, main

    assert main(["--images", str(tmp_path), "--model", "missing.safetensors", "--resolution", str(resolution)]) == EXIT_BAD_INPUT
    assert f"The training resolution {resolution} is outside 64 to 4096" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(1, 0, 8, 3), (1, 8, 0, 3), (1, 8, 8, 1)])
def test_images_without_pixels_or_rgb_are_refused_in_a_sentence(pack, shape):
    """Only another node makes them (no pixels, or one grey channel); bucketing and PIL raised on them."""
    from comfyui_qrlora.integration.training.data import single_images
    from comfyui_qrlora.qrlora_core.errors import AdapterError

    with pytest.raises(AdapterError, match="not an RGB picture"):
        single_images([torch.zeros(shape)])
    assert len(single_images([torch.zeros(2, 8, 8, 4)])) == 2, "RGBA keeps its RGB"


def test_latents_of_another_models_vae_are_refused_before_step_1(pack, folders, rng):
    """SD3's or Flux's 16-channel latents into SD1.5 (or the reverse) failed inside the first forward as a conv error."""
    from comfyui_qrlora.qrlora_core.errors import AdapterError

    latents, positive = inputs("flux", rng)  # 16 channels
    with pytest.raises(AdapterError, match="The latents have 16 channels where this model takes 4: encode the training images with this model's own VAE"):
        session(models.patcher("sd15"), latents, positive)


def test_captions_of_another_models_text_encoder_are_refused_in_a_sentence(pack, folders, rng):
    """SD1.5's CLIP conditioning (no pooled output) into Flux failed at the first step as KeyError: 'pooled_output'."""
    from comfyui_qrlora.qrlora_core.errors import AdapterError

    latents, _ = inputs("flux", rng)
    with pytest.raises(AdapterError, match="The captions were not encoded for this model .*pooled_output.*this model's own text encoder"):
        train(pack, models.patcher("flux"), latents, [[_caption("sd15", rng)]], filename_prefix="t/wrong_captions")
