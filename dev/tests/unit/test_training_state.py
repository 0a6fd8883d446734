"""A checkpoint's training state (qrlora_core/training/state.py): stop, save, load, continue = never stopped.

A small stand-in for a run: triangular ΔRs, a loss drawn from the run's own
generator (images and noise), gradient clipping and each optimizer the
trainer offers. Continuing from the file must give the uninterrupted run's
ΔR bit for bit.
"""

import pytest
import torch

from comfyui_qrlora.qrlora_core.adapter import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.errors import AdapterError
from comfyui_qrlora.qrlora_core.formats import atomic_save, load_adapter, read_safetensors, save_native
from comfyui_qrlora.qrlora_core.training.state import PREFIX, TrainingState, read_training_state, steps_trained

SHAPES = {"a": (6, 10), "b": (4, 7)}  # ΔR r x n per layer
OPTIMIZERS = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam, "SGD": torch.optim.SGD, "RMSprop": torch.optim.RMSprop}
SETTINGS = {"learning_rate": 0.05, "batch_size": 2}


def make_run(name, delta_rs, seed):
    params = [torch.nn.Parameter(d.clone()) for d in delta_rs]
    extra = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    optimizer = OPTIMIZERS[name](params, lr=SETTINGS["learning_rate"], weight_decay=1e-2, **extra)
    return params, optimizer, torch.Generator().manual_seed(seed)


def train(params, optimizer, generator, steps, targets):
    for _ in range(steps):
        pick = torch.randperm(len(targets), generator=generator)[:2].tolist()
        loss = 0
        for p, layer in zip(params, targets[0]):
            noise = torch.randn(p.shape, generator=generator)
            for i in pick:
                loss = loss + ((torch.triu(p) - targets[i][layer] - 0.1 * noise) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def save_checkpoint(path, params, optimizer, name, generator, step, rng):
    targets = {layer: QRTarget(q=torch.linalg.qr(torch.randn(12, r, generator=rng))[0], delta_r=torch.triu(p.detach()))
               for (layer, (r, _)), p in zip(SHAPES.items(), params)}
    adapter = QRLoRA(targets, rank=4, alpha=4.0, format="native", metadata={"steps": step})
    state = TrainingState.capture(step, name, optimizer, list(SHAPES), {"draws": generator.get_state()}, SETTINGS)
    save_native(adapter, path, extra=state.pack())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_continuing_from_a_checkpoint_equals_the_run_that_never_stopped(tmp_path, rng, name):
    targets = [{layer: torch.randn(*shape, generator=rng) for layer, shape in SHAPES.items()} for _ in range(4)]
    start = [torch.zeros(*shape) for shape in SHAPES.values()]
    seed = int(torch.randint(2**31, (1,), generator=rng))

    straight = make_run(name, start, seed)
    train(*straight, 10, targets)

    first = make_run(name, start, seed)
    train(*first, 4, targets)
    path = str(tmp_path / "checkpoint.safetensors")
    save_checkpoint(path, first[0], first[1], name, first[2], 4, rng)

    adapter = load_adapter(path)
    state = read_training_state(path, "checkpoint.safetensors")
    assert state.step == 4 and state.optimizer == name and state.differences(SETTINGS) == []
    resumed = make_run(name, [adapter.targets[layer].delta_r for layer in SHAPES], seed=12345)  # the seed is the file's
    state.restore(resumed[1], list(SHAPES), {"draws": resumed[2]})
    train(*resumed, 6, targets)

    for a, b in zip(straight[0], resumed[0]):
        assert torch.equal(a, b), (a - b).abs().max()
    assert any(p.abs().sum() > 0 for p in straight[0])


def test_state_is_tensors_and_json_and_a_plain_adapter_has_none(tmp_path, rng):
    params, optimizer, generator = make_run("AdamW", [torch.zeros(*s) for s in SHAPES.values()], 3)
    train(params, optimizer, generator, 2, [{k: torch.ones(*s) for k, s in SHAPES.items()}] * 2)
    path = str(tmp_path / "with_state.safetensors")
    save_checkpoint(path, params, optimizer, "AdamW", generator, 2, rng)
    tensors, metadata = read_safetensors(path)
    state_keys = sorted(k for k in tensors if k.startswith(PREFIX))
    assert state_keys == sorted([f"{PREFIX}optimizer.{layer}.{k}" for layer in SHAPES for k in ("exp_avg", "exp_avg_sq", "step")]
                                + [f"{PREFIX}rng.draws"])
    assert tensors[f"{PREFIX}rng.draws"].dtype == torch.uint8
    assert '"optimizer": "AdamW"' in metadata["train_state"]
    assert load_adapter(path).targets.keys() == set(SHAPES)  # the adapter itself loads as before

    plain = str(tmp_path / "plain.safetensors")
    save_native(load_adapter(path), plain)
    assert read_training_state(plain, "plain.safetensors") is None


def test_changed_settings_are_named_and_a_damaged_state_is_explained(tmp_path):
    state = TrainingState(3, "AdamW", {"a": {}}, {}, {"learning_rate": 1e-4, "batch_size": 1})
    assert state.differences({"learning_rate": 2e-4, "batch_size": 1, "new_setting": 5}) == ["learning_rate 0.0001 -> 0.0002"]
    tensors, metadata = state.pack()
    path = str(tmp_path / "damaged.safetensors")
    atomic_save({**tensors, "x": torch.zeros(1)}, path, {"train_state": metadata["train_state"].replace('"layers"', '"lay"')})
    with pytest.raises(AdapterError, match="its training state is damaged"):
        read_training_state(path, "damaged.safetensors")
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(AdapterError, match="lacks 1 of the layers"):
        state.restore(optimizer, ["b"], {})


@pytest.mark.parametrize("name, key, bad", [("AdamW", "step", -1.0), ("AdamW", "step", 2.5), ("AdamW", "step", 99.0), ("Adam", "step", "x"),
                                            ("AdamW", "exp_avg_sq", -1.0), ("RMSprop", "square_avg", -1.0)])
def test_a_state_the_optimizer_would_divide_by_zero_or_root_a_negative_on_is_refused(tmp_path, rng, name, key, bad):
    """Values no run writes: Adam's step count of -1 makes its next step divide by zero (an exception, not a sentence),
    a negative average of squares makes it NaN. Refused before the optimizer sees them; the file's own state restores."""
    params, optimizer, generator = make_run(name, [torch.randn(*s, generator=rng) for s in SHAPES.values()], 0)
    train(params, optimizer, generator, 3, [{layer: torch.randn(*s, generator=rng) for layer, s in SHAPES.items()} for _ in range(4)])
    state = TrainingState.capture(3, name, optimizer, list(SHAPES), {}, SETTINGS)
    fresh = make_run(name, [p.detach() for p in params], 0)[1]
    state.restore(fresh, list(SHAPES), {})
    entry = state.layers["a"][key]
    state.layers["a"][key] = bad if isinstance(bad, str) else (torch.full_like(entry, bad) if isinstance(entry, torch.Tensor) else bad)
    with pytest.raises(AdapterError, match=f"damaged.*{key if key != 'step' else 'optimizer steps'}"):
        state.restore(make_run(name, [p.detach() for p in params], 0)[1], list(SHAPES), {})


@pytest.mark.parametrize("text", ['{"version": Infinity, "step": 3, "optimizer": "AdamW", "layers": [], "scalars": {}}',
                                  '{"version": 1, "step": Infinity, "optimizer": "AdamW", "layers": [], "scalars": {}}', "[" * 100000],
                         ids=["infinite version", "infinite step", "endless nesting"])
def test_a_train_state_entry_with_infinite_numbers_or_endless_nesting_is_damaged(text):
    with pytest.raises(AdapterError, match="checkpoint.safetensors: its training state is damaged"):
        TrainingState.unpack({}, {"train_state": text}, "checkpoint.safetensors")


@pytest.mark.parametrize("name, change", [
    ("AdamW", lambda layer: {"step": 3}),  # no moments: the next step would fail on a missing key
    ("Adam", lambda layer: {**layer, "exp_avg": 1}),  # a moment as a JSON number
    ("AdamW", lambda layer: {**layer, "step": torch.tensor(True)}),
    ("RMSprop", lambda layer: {k: v for k, v in layer.items() if k != "square_avg"}),
    ("SGD", lambda layer: {**layer, "exp_avg": layer["momentum_buffer"]}),  # a key its optimizer never keeps
], ids=["no moments", "number moment", "bool step", "no square_avg", "foreign key"])
def test_a_layer_state_unlike_what_its_optimizer_keeps_is_refused(rng, name, change):
    params, optimizer, generator = make_run(name, [torch.randn(*s, generator=rng) for s in SHAPES.values()], 0)
    train(params, optimizer, generator, 3, [{layer: torch.randn(*s, generator=rng) for layer, s in SHAPES.items()} for _ in range(4)])
    state = TrainingState.capture(3, name, optimizer, list(SHAPES), {}, SETTINGS)
    state.layers["a"] = change(state.layers["a"])
    with pytest.raises(AdapterError, match="checkpoint.safetensors: its training state is damaged"):
        state.restore(make_run(name, [p.detach() for p in params], 0)[1], list(SHAPES), {}, "checkpoint.safetensors")


def test_sgd_without_momentum_restores_with_or_without_its_empty_momentum_buffer():
    """torch versions differ: some keep momentum_buffer None for SGD without momentum, others nothing."""
    for layer in ({}, {"momentum_buffer": None}):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2, 3))], lr=0.1)
        TrainingState(3, "SGD", {"a": dict(layer)}, {}).restore(optimizer, ["a"], {})


def test_a_generator_state_it_cannot_take_is_refused_and_nothing_is_restored(rng):
    params, optimizer, generator = make_run("AdamW", [torch.randn(*s, generator=rng) for s in SHAPES.values()], 0)
    train(params, optimizer, generator, 2, [{layer: torch.randn(*s, generator=rng) for layer, s in SHAPES.items()} for _ in range(4)])
    state = TrainingState.capture(2, "AdamW", optimizer, list(SHAPES), {"draws": torch.full_like(generator.get_state(), 255)}, SETTINGS)
    fresh, draws = make_run("AdamW", [p.detach() for p in params], 7)[1:]
    before = draws.get_state()
    with pytest.raises(AdapterError, match="checkpoint.safetensors: its training state is damaged.*random generator"):
        state.restore(fresh, list(SHAPES), {"draws": draws}, "checkpoint.safetensors")
    assert fresh.state_dict()["state"] == {} and torch.equal(draws.get_state(), before)


@pytest.mark.parametrize("steps", ["abc", "1.5e3", "-2", "²", "9" * 5000], ids=["letters", "exponent", "negative", "superscript", "5000 digits"])
def test_steps_an_adapter_claims_must_be_a_whole_number_to_continue_from(tmp_path, rng, steps):
    targets = {"a": QRTarget(q=torch.linalg.qr(torch.randn(12, 4, generator=rng))[0], delta_r=torch.triu(torch.randn(4, 6, generator=rng)))}
    path = str(tmp_path / "claims.safetensors")
    save_native(QRLoRA(targets, rank=4, alpha=4.0, format="native", metadata={"steps": steps}), path)
    with pytest.raises(AdapterError, match="claims.safetensors"):
        steps_trained(load_adapter(path, source="claims.safetensors"))
    assert steps_trained(QRLoRA(targets, rank=4, alpha=4.0, format="native", metadata={"steps": "12"})) == 12
    assert steps_trained(QRLoRA(targets, rank=4, alpha=4.0, format="native")) == 0
