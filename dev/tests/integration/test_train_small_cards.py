"""Training on the GPUs people have: fp8 bases, offloading, and the up-front fit check (in-process, CPU).

Models are ComfyUI's own Flux class at a small size, loaded the way
ComfyUI's loaders load a file (supported_models config, inference and
manual-cast dtypes, ops picked by ComfyUI, weights converted on load), so
an fp8 base holds float8 weights and computes in the training dtype, as
UNETLoader's weight_dtype gives it. Offloading on the CPU goes through
ComfyUI's own partial-load path (ModelPatcher lowvram: modules marked for
casting, weights fetched by comfy.ops.cast_bias_weight each forward).
"""

import os

import pytest
import torch

from devkit import models

STEPS = 3


@pytest.fixture(scope="module")
def flux_state(pack):
    return {k: v.contiguous() for k, v in models.build("flux", seed=5).diffusion_model.state_dict().items()}


def load_flux(state, weight_dtype, compute_dtype=torch.bfloat16):
    """The state dict loaded as ComfyUI's loader does for a weight_dtype (fp8: stored fp8, manual cast to compute)."""
    import comfy.model_patcher
    import comfy.supported_models as sm

    config = sm.Flux(dict(models.FLUX_CONFIG))
    config.set_inference_dtype(weight_dtype, None if weight_dtype == compute_dtype else compute_dtype)
    model = config.get_model({})
    model.load_model_weights({"model.diffusion_model." + k: v for k, v in state.items()}, "model.diffusion_model.")
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = [{"samples": torch.randn(2, 16, 8, 8, generator=g)}]
    positive = [[[torch.randn(1, 8, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]]]
    return latents, positive


def config(**overrides):
    from comfyui_qrlora.qrlora_core.training import TrainConfig

    values = dict(rank=4, steps=STEPS, learning_rate=0.5, grad_accumulation=1, optimizer="SGD", training_dtype="bf16",
                  gradient_checkpointing=True, seed=3, weight_decay=0.0, max_grad_norm=0.0)
    values.update(overrides)
    return TrainConfig(**values)


def train(patcher, cfg, existing=None, watch=None):
    """Losses and the ΔRs after every step of a session on `patcher`."""
    from comfyui_qrlora.integration.training.session import TrainingSession

    latents, positive = inputs()
    states = []
    with torch.inference_mode(False), TrainingSession(patcher, cfg, latents, positive, existing) as session:
        if watch:
            watch(session)

        def after(step, loss):
            states.append({n: l.delta_r.detach().clone() for n, l in session.targets.layers.items()})

        losses = session.run(cfg.steps, after)
    return losses, states, session


def zero_adapter(patcher, rank=4):
    """A fresh adapter (ΔR = 0) on `patcher`'s basis, so runs on other copies of the base share Q."""
    from comfyui_qrlora.integration import files
    from comfyui_qrlora.integration.training.session import base_weights, choose_targets
    from comfyui_qrlora.qrlora_core.training import TrainTargets

    where, _ = choose_targets(patcher, config(rank=rank))
    targets = TrainTargets.new(base_weights(patcher, where), rank, float(rank), True, files.basis_store())
    return targets.to_adapter({}, source="zero.safetensors")


def relative(a: dict, b: dict) -> float:
    num = sum(float((a[n].double() - b[n].double()).norm() ** 2) for n in b)
    return (num / sum(float(b[n].double().norm() ** 2) for n in b)) ** 0.5


# Relative ΔR difference to the bf16 base after each step, on the test's random-weight Flux: what rounding
# every weight to 3 (e4m3fn) or 2 (e5m2) mantissa bits does to the gradients (measured about 0.12 and 0.25).
FP8_TOLERANCE = {torch.float8_e4m3fn: 0.2, torch.float8_e5m2: 0.4}


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3fn", "e5m2"])
def test_fp8_base_trains_like_bf16_and_stays_fp8(pack, folders, flux_state, fp8):
    """Same Q, same draws. On an fp8 base, training is exactly training on those rounded weights in bf16
    (the fp8 weights are only ever copied up to bf16 per use), and within FP8_TOLERANCE of the unrounded bf16 base."""
    bf16 = load_flux(flux_state, torch.bfloat16)
    adapter = zero_adapter(bf16)
    _, reference, _ = train(bf16, config(), adapter)

    low = load_flux(flux_state, fp8)
    rounded = load_flux({k: v.to(torch.bfloat16) for k, v in low.model.diffusion_model.state_dict().items()}, torch.bfloat16)
    _, same_weights, _ = train(rounded, config(), adapter)
    qkv = low.model.diffusion_model.double_blocks[0].img_attn.qkv
    seen = {}
    _, ours, _ = train(low, config(), adapter, watch=lambda s: seen.update(dtype=qkv.weight.dtype, cast=qkv.comfy_cast_weights))

    assert seen == {"dtype": fp8, "cast": True}  # stored fp8 while training, copied to bf16 per use
    assert qkv.weight.dtype == fp8
    for step in range(STEPS):
        assert relative(ours[step], same_weights[step]) < 1e-6, f"step {step + 1}: fp8 storage changed more than the weights' rounding"
        error = relative(ours[step], reference[step])
        print(f"{fp8} step {step + 1}: relative ΔR difference to the bf16 base {error:.3f}")
        assert error <= FP8_TOLERANCE[fp8]


def test_fp8_basis_and_fingerprints_come_from_the_fp8_weights(pack, folders, flux_state):
    """A fresh run on an fp8 base decomposes the weights as the model holds them, not a wider copy."""
    from comfyui_qrlora.integration.training.session import base_weights
    from comfyui_qrlora.qrlora_core.decompose import decompose
    from comfyui_qrlora.qrlora_core.fingerprint import sketch

    low = load_flux(flux_state, torch.float8_e4m3fn)
    _, _, session = train(low, config(steps=1))
    targets = session.targets
    weights = base_weights(low, session.where)
    name = next(n for n in weights if "single" in n)
    assert weights[name].dtype == torch.float8_e4m3fn
    assert torch.equal(targets.sketches[name], sketch(weights[name]))
    q = decompose(weights[name].float(), 4).q
    assert torch.allclose(targets.layers[name].q, q, atol=1e-4)


@pytest.mark.parametrize("after_a_resident_run", [False, True], ids=["fresh model", "after a resident run"])
def test_offloaded_training_equals_resident_training_step_for_step(pack, folders, flux_state, after_a_resident_run):
    """A budget of a few MB leaves most layers in ComfyUI's lowvram state; the run is the resident run exactly,
    also on a model a resident run (a full load with a compute dtype) has used before."""
    import comfy.utils

    patcher = load_flux(flux_state, torch.bfloat16)
    resident_losses, resident, _ = train(patcher if after_a_resident_run else load_flux(flux_state, torch.bfloat16), config())

    budget = 0.002  # GiB: about 2 MB of the model's ~17 MB
    found = {}

    def look(session):
        mp = session.patcher
        lowvram = [m for m in mp.model.modules() if getattr(m, "prev_comfy_cast_weights", None) is not None]
        ours = [w for m in lowvram for w in getattr(m, "weight_function", []) if w in session.wrappers.values()]
        found.update(offloaded=session.plan.offloaded, lowvram=len(lowvram), wrapped=len(ours), loaded=mp.loaded_size(),
                     keep=session.plan.keep, flag=mp.model.model_lowvram,
                     devices={p.device.type for w in session.wrappers.values() for p in w.parameters()},
                     attached=all(any(f is w for f in comfy.utils.get_attr(mp.model, key.rsplit(".", 1)[0]).weight_function)
                                  for key, w in session.wrappers.items()))

    losses, offloaded, session = train(patcher, config(model_on_gpu_gb=budget), watch=look)
    assert found["offloaded"] and found["flag"] and found["loaded"] <= found["keep"] < patcher.model_size()
    assert found["lowvram"] > 10 and found["wrapped"] > 5  # our wrappers run on lowvram-cast weights
    assert found["devices"] == {"cpu"}  # the wrappers live on the load device
    assert found["attached"]  # every trained layer runs its wrapper, resident or not
    assert any("stayed on the GPU" in n for n in session.notes)
    assert losses == resident_losses
    for step in range(STEPS):
        for name in resident[step]:
            assert torch.equal(offloaded[step][name], resident[step][name]), f"step {step + 1}, {name}"


def test_release_leaves_no_wrapper_and_the_base_bit_identical(pack, folders, flux_state):
    patcher = load_flux(flux_state, torch.float8_e4m3fn)
    before = {k: v.clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
    train(patcher, config(steps=1, model_on_gpu_gb=0.002))
    for m in patcher.model.modules():
        assert not any(type(f).__name__ == "QRWeightWrapper" for f in getattr(m, "weight_function", []))
    after = patcher.model.diffusion_model.state_dict()
    assert all(torch.equal(after[k].view(torch.uint8), v.view(torch.uint8)) if v.dtype.itemsize == 1 else torch.equal(after[k], v) for k, v in before.items())


# ------------------------------------------------------------ the plan, on a GPU's numbers


class Card:
    """A GPU as the planner sees it: a CUDA device type with a given free memory (the model in host memory)."""

    def __init__(self, monkeypatch, free_gib: float, held_gib: float = 0.0):
        from comfyui_qrlora.integration.training import fit as train_fit

        monkeypatch.setattr(train_fit, "device_free", lambda device: int(free_gib * train_fit.GiB))
        monkeypatch.setattr(train_fit, "held_by_models", lambda device: int(held_gib * train_fit.GiB))


def planned(patcher, **overrides):
    from comfyui_qrlora.integration.training import fit as train_fit
    from comfyui_qrlora.integration.training.session import choose_targets, target_shapes

    cfg = config(**overrides)
    where, _ = choose_targets(patcher, cfg)
    patcher.load_device = torch.device("cuda", 0)  # sizes only: nothing is allocated
    latents = [torch.zeros(1, 16, 8, 8)]
    return train_fit.plan(patcher, target_shapes(patcher, where), cfg, latents)


def test_plan_keeps_the_whole_model_when_it_fits_and_offloads_the_rest_otherwise(pack, flux_state, monkeypatch):
    from comfyui_qrlora.integration.training import fit as train_fit

    patcher = load_flux(flux_state, torch.bfloat16)
    Card(monkeypatch, 8)
    roomy = planned(patcher)
    assert not roomy.offloaded and roomy.keep == patcher.model_size()
    need = roomy.peak
    Card(monkeypatch, (need - patcher.model_size() // 2) / train_fit.GiB)
    tight = planned(patcher)
    assert tight.offloaded and 0 < tight.keep < patcher.model_size() and tight.peak <= need - patcher.model_size() // 2 + 1


def test_a_run_that_cannot_fit_says_so_and_what_would_fit(pack, flux_state, monkeypatch):
    from comfyui_qrlora.integration.training import fit as train_fit
    from comfyui_qrlora.qrlora_core.errors import AdapterError

    patcher = load_flux(flux_state, torch.bfloat16)
    Card(monkeypatch, 64)
    with_checkpointing = planned(patcher).working
    Card(monkeypatch, (with_checkpointing + 1024) / train_fit.GiB)  # enough with checkpointing, not without
    with pytest.raises(AdapterError) as error:
        planned(patcher, gradient_checkpointing=False)
    text = str(error.value)
    assert "does not fit" in text and "turn on gradient_checkpointing" in text and text.count(".") <= 12
    with pytest.raises(AdapterError) as error:
        planned(patcher, model_on_gpu_gb=1.0)
    assert "set model_on_gpu_gb to" in str(error.value)


def test_out_of_memory_is_one_sentence_with_a_setting(pack):
    from comfyui_qrlora.integration.training import fit as train_fit

    p = train_fit.MemoryPlan(torch.device("cuda", 0), weights=24 * train_fit.GiB, keep=10 * train_fit.GiB, adapter=train_fit.GiB,
                             block=train_fit.GiB, activations=train_fit.GiB, available=14 * train_fit.GiB)
    error = train_fit.out_of_memory(p, 3, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert "at step 3" in str(error) and "model_on_gpu_gb to 8.0" in str(error)


def test_the_basis_build_records_no_autograd_graph(pack, folders, flux_state):
    """Weights that require grad (a model built outside ComfyUI's inference mode) must not make the basis
    build keep its working copies alive: on the first H200 run such a build filled the GPU (129 GiB)."""
    patcher = load_flux(flux_state, torch.bfloat16)
    assert any(p.requires_grad for p in patcher.model.parameters())
    from comfyui_qrlora.integration.training.session import TrainingSession

    latents, positive = inputs()
    with torch.inference_mode(False):
        session = TrainingSession(patcher, config(steps=1), latents, positive)
    for name, layer in session.targets.layers.items():
        assert session.targets.sketches[name].grad_fn is None and not session.targets.sketches[name].requires_grad, name
        assert layer.q.grad_fn is None, name


def load_flux_scaled_fp8(state):
    """An fp8-scaled checkpoint as ComfyUI loads one (scaled_fp8 ops): each linear weight stored as W / scale in
    float8 with its `scale_weight`; returns the patcher and the weights it stands for, dequantized."""
    import comfy.model_patcher
    import comfy.supported_models as sm

    config = sm.Flux(dict(models.FLUX_CONFIG))
    config.scaled_fp8 = torch.float8_e4m3fn
    config.set_inference_dtype(torch.float8_e4m3fn, torch.bfloat16)
    model = config.get_model({})
    stored, meant = dict(state), dict(state)
    for name, module in model.diffusion_model.named_modules():
        if hasattr(module, "scale_weight") and name + ".weight" in state:
            w = state[name + ".weight"].float()
            scale = w.abs().max() / 448 * 4  # a scale far from 1, as real checkpoints have
            stored[name + ".weight"] = (w / scale).to(torch.float8_e4m3fn)
            stored[name + ".scale_weight"] = scale.reshape(())
            meant[name + ".weight"] = stored[name + ".weight"].float() * scale
    model.load_model_weights({"model.diffusion_model." + k: v for k, v in stored.items()}, "model.diffusion_model.")
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu), meant


def test_scaled_fp8_base_trains_like_its_dequantized_weights(pack, folders, flux_state):
    """Scaled-fp8 layers run weight functions on W / scale and multiply by the scale after: the delta must be divided
    by it, or the adapter would act `scale` times too strongly."""
    scaled, meant = load_flux_scaled_fp8(flux_state)
    qkv = scaled.model.diffusion_model.double_blocks[0].img_attn.qkv
    assert qkv.weight.dtype == torch.float8_e4m3fn and float(qkv.scale_weight) != 1.0
    reference = load_flux(meant, torch.bfloat16)
    adapter = zero_adapter(reference)
    _, want, _ = train(reference, config(), adapter)
    _, got, _ = train(scaled, config(), adapter)
    for step in range(STEPS):
        error = relative(got[step], want[step])
        print(f"scaled fp8 step {step + 1}: relative ΔR difference to its dequantized weights in bf16 {error:.2e}")
        assert error < 0.05


def test_the_basis_is_decomposed_in_the_room_the_plan_leaves_or_on_the_cpu(pack, flux_state, monkeypatch):
    from comfyui_qrlora.integration.training import fit as train_fit
    from comfyui_qrlora.integration.training.session import TrainingSession, base_weights, choose_targets
    from comfyui_qrlora.qrlora_core.decompose import working_bytes

    patcher = load_flux(flux_state, torch.bfloat16)
    where, _ = choose_targets(patcher, config())
    weights = base_weights(patcher, where)
    largest = max(working_bytes(tuple(w.shape), w.dtype, 4) for w in weights.values())
    for full in (False, True):
        session = TrainingSession.__new__(TrainingSession)  # only what basis_memory reads
        session.model, session.config, session.notes = patcher, config(), []
        # a roomy card; then one whose memory other loaded models hold now (freed only when training loads its model)
        Card(monkeypatch, *((0.001, 64.0) if full else (64.0, 0.0)))
        session.plan = planned(patcher)
        device, budget = session.basis_memory(weights)
        if not full:
            assert device.type == "cuda" and largest <= budget <= session.plan.available - session.plan.keep
        else:
            assert device.type == "cpu" and budget is None and "decomposed on the CPU" in session.notes[0]
