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

from support import models
from support.host import import_pack

STEPS = 6


@pytest.fixture(scope="module")
def pack():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the test server runs: far faster on the shared 2-core machine
    yield import_pack()
    torch.set_num_threads(threads)


@pytest.fixture
def folders(pack, tmp_path, monkeypatch):
    """ComfyUI's folders pointed at this test's temporary directory."""
    import folder_paths

    for name in ("loras", "qrlora_bases"):
        os.makedirs(tmp_path / name)
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(tmp_path / name)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path / "temp"))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    return tmp_path


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


def inputs(arch, generator, images=2):
    if arch == "flux":
        latent = torch.randn(images, 16, 8, 8, generator=generator)
        cond = [[torch.randn(1, 8, 4096, generator=generator), {"pooled_output": torch.randn(1, 768, generator=generator), "guidance": 3.5}]]
    else:
        latent = torch.randn(images, 4, 8, 8, generator=generator)
        cond = [[torch.randn(1, 8, 768, generator=generator), {}]]
    return [{"samples": latent}], [cond]


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


@pytest.mark.parametrize("arch", ["flux", "sd15"])
def test_wrapped_model_is_the_base_at_step_zero_and_only_delta_r_learns(pack, folders, arch, rng):
    from comfyui_qrlora.nodes import files
    from comfyui_qrlora.nodes.train import _base_weights, _release, trainable_targets
    from comfyui_qrlora.nodes.train_loop import OutOfPlaceUpdates
    from comfyui_qrlora.qrlora_core.training import TrainConfig, TrainTargets, select

    base = models.patcher(arch)
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    reference = forward(base, arch, torch.Generator().manual_seed(seed))
    candidates = trainable_targets(base)
    where = {n: candidates[n] for n in select(candidates, TrainConfig().target_regex())}
    targets = TrainTargets.new(_base_weights(base, where, "cpu"), 4, 4.0, True, files.basis_store())
    mp = base.clone()
    wrappers = targets.wrappers(where)
    for key, wrapper in wrappers.items():
        mp.add_weight_wrapper(key, wrapper)
    mp.model.requires_grad_(False)  # as the trainer does: the base weights are constants
    fused = [w for w in wrappers.values() if len(w.targets) > 1]
    assert bool(fused) == (arch == "flux")  # Flux: q, k, v share img_attn.qkv / linear1
    with torch.enable_grad(), OutOfPlaceUpdates():  # as the trainer runs it
        out = forward(mp, arch, torch.Generator().manual_seed(seed))
        assert torch.equal(out, reference)  # ΔR = 0: exactly the base model
        out.square().mean().backward()
    assert all(p.grad is None for p in mp.model.parameters())
    grads = [layer.delta_r.grad for layer in targets.layers.values()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert sum(g.numel() for g in grads) == sum(4 * layer.in_features for layer in targets.layers.values()) == targets.trainable_count()
    _release(mp, wrappers)
    assert not any(getattr(m, "weight_function", None) for m in base.model.modules())
    assert torch.equal(forward(base, arch, torch.Generator().manual_seed(seed)), reference)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_flux_gradients_match_finite_differences(pack, folders, checkpointing, rng):
    """ComfyUI's Flux blocks update their residual stream in place; the trainer must still get true gradients."""
    from comfy_extras.nodes_train import find_all_highest_child_module_with_forward, unpatch
    from comfyui_qrlora.nodes import files
    from comfyui_qrlora.nodes.train import _base_weights, trainable_targets
    from comfyui_qrlora.nodes.train_loop import OutOfPlaceUpdates, checkpoint
    from comfyui_qrlora.qrlora_core.training import TrainConfig, TrainTargets, select

    base = models.patcher("flux")
    candidates = trainable_targets(base)
    where = {n: candidates[n] for n in select(candidates, TrainConfig().target_regex())}
    targets = TrainTargets.new(_base_weights(base, where, "cpu"), 4, 4.0, True, files.basis_store())
    with torch.no_grad():
        for layer in targets.layers.values():
            layer.delta_r.copy_(0.05 * torch.randn(layer.delta_r.shape, generator=rng))
    mp = base.clone()
    for key, wrapper in targets.wrappers(where).items():
        mp.add_weight_wrapper(key, wrapper)
    blocks = find_all_highest_child_module_with_forward(mp.model.diffusion_model) if checkpointing else []
    for m in blocks:
        checkpoint(m)
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))

    def loss():
        with OutOfPlaceUpdates():
            return forward(mp, "flux", torch.Generator().manual_seed(seed)).double().square().mean()

    try:
        with torch.enable_grad():
            loss().backward()
        direction = {n: torch.randn(l.delta_r.shape, generator=rng) for n, l in targets.layers.items()}
        analytic = sum(float((l.delta_r.grad * torch.triu(direction[n])).sum()) for n, l in targets.layers.items())
        eps = 1e-3
        with torch.no_grad():
            for n, l in targets.layers.items():
                l.delta_r += eps * direction[n]
            up = float(loss())
            for n, l in targets.layers.items():
                l.delta_r -= 2 * eps * direction[n]
            down = float(loss())
    finally:
        for m in blocks:
            unpatch(m)
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=2e-2)


def test_flux_slices_are_decomposed_per_published_module(pack, folders, rng):
    from comfyui_qrlora.qrlora_core.decompose import decompose, subspace_error

    model = models.patcher("flux")
    latents, positive = inputs("flux", rng)
    out = train(pack, model, latents, positive, steps=2)
    adapter, patched, loss_map, curve, steps = out.args
    assert steps == 2 and len(loss_map["loss"]) == 2 and curve.shape[-1] == 3
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
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        train(pack, models.patcher("sd15"), latents, positive, filename_prefix="t/stopped", checkpoint_every=2)
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
    second, _, _, _, steps = out.args
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
    adapter, _, loss_map, _, steps = out.args
    assert steps == 2 and len(loss_map["loss"]) == 2 and all(torch.isfinite(torch.tensor(loss_map["loss"])))
    assert any(t.delta_r.any() for t in adapter.targets.values())
    assert all(t.delta_r.dtype == torch.float32 for t in adapter.targets.values())  # ΔR is kept in fp32 whatever the training dtype
    from comfyui_qrlora.qrlora_core.errors import AdapterError

    with pytest.raises(AdapterError, match=r"3 captions \(conditionings\) for 2 training images"):
        train(pack, model, latents, [caption, caption, caption], steps=1)
