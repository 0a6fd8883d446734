"""Training layers and targets (qrlora_core.training), against float64 references."""

import re

import pytest
import torch

from comfyui_qrlora.qrlora_core import AdapterError
from comfyui_qrlora.qrlora_core.basis import BasisStore
from comfyui_qrlora.qrlora_core.training import QRDelta, QRWeightWrapper, TrainConfig, TrainTargets, select
from comfyui_qrlora.qrlora_core.training import config as settings


def orthonormal(m, r, generator):
    q, _ = torch.linalg.qr(torch.randn(m, r, generator=generator, dtype=torch.float64))
    return q


def random_delta(q, n, generator, scale=1.0, triangular=True):
    return QRDelta(q, torch.randn(q.shape[1], n, generator=generator, dtype=torch.float64), scale, triangular)


def test_patched_weight_is_w_plus_s_q_masked_delta_r(rng):
    w = torch.randn(24, 16, generator=rng, dtype=torch.float64)
    q = orthonormal(24, 6, rng)
    for triangular in (True, False):
        layer = random_delta(q, 16, rng, scale=2.5, triangular=triangular)
        mask = torch.triu(torch.ones(6, 16, dtype=torch.float64)) if triangular else torch.ones(6, 16, dtype=torch.float64)
        expected = w + 2.5 * q @ (mask * layer.delta_r.detach())
        got = QRWeightWrapper([layer], [None])(w)
        assert torch.allclose(got, expected, rtol=0, atol=1e-12)


def test_step_zero_is_the_base_weight_exactly(rng):
    for shape in ((24, 16), (24, 16, 1, 1)):  # linear and 1x1 conv
        w = torch.randn(*shape, generator=rng)
        layer = QRDelta.zeros(orthonormal(24, 4, rng).float(), 16, scale=3.0)
        assert torch.equal(QRWeightWrapper([layer], [None])(w), w)
    fused = torch.randn(40, 16, generator=rng)
    parts = [QRDelta.zeros(orthonormal(8, 4, rng).float(), 16) for _ in range(3)]
    assert torch.equal(QRWeightWrapper(parts, [(0, 8), (8, 8), (16, 8)])(fused), fused)


@pytest.mark.parametrize("rows", [
    [(0, 10), (10, 10), (20, 10)],  # q, k, v back to back: one batched multiply-add
    [(3, 10), (13, 10), (23, 10)],  # the same after rows no target owns
    [(0, 10), (12, 8), (20, 10)],  # irregular slices: one multiply-add per slice
])
def test_fused_wrapper_adds_only_to_each_targets_rows(rng, rows):
    w = torch.randn(3 * 10 + 7, 12, generator=rng, dtype=torch.float64)  # q, k, v and rows no target owns
    layers = [random_delta(orthonormal(length, 3, rng), 12, rng, scale=0.5) for _, length in rows]
    before = w.clone()
    wrapper = QRWeightWrapper(layers, rows)
    assert (wrapper.span is not None) == (rows[1][1] == rows[0][1])
    got = wrapper(w)
    assert torch.equal(w, before)  # the caller's tensor is never written
    owned = torch.zeros(w.shape[0], dtype=torch.bool)
    for layer, (start, length) in zip(layers, rows):
        expected = before[start : start + length] + 0.5 * layer.q @ torch.triu(layer.delta_r.detach())
        assert torch.allclose(got[start : start + length], expected, rtol=0, atol=1e-12)
        owned[start : start + length] = True
    assert torch.equal(got[~owned], before[~owned])


def test_triangular_mask_holds_in_forward_and_gradient(rng):
    q = orthonormal(20, 5, rng)
    layer = random_delta(q, 9, rng)
    x = torch.randn(4, 9, generator=rng, dtype=torch.float64)
    w = torch.randn(20, 9, generator=rng, dtype=torch.float64)
    wrapper = QRWeightWrapper([layer], [None])
    y = torch.nn.functional.linear(x, wrapper(w))
    y.square().sum().backward()
    below = torch.tril(torch.ones(5, 9, dtype=torch.bool), diagonal=-1)
    assert torch.all(layer.delta_r.grad[below] == 0)
    assert torch.all(layer.delta_r.grad[~below] != 0)
    with torch.no_grad():  # entries below the diagonal do not reach the weight
        layer.delta_r[below] = 1e3
    assert torch.allclose(wrapper(w), w + q @ torch.triu(layer.delta_r.detach()), atol=1e-9)


def test_only_delta_r_is_trained_and_it_is_half_a_lora_on_square_layers(rng):
    shapes = {"a.to_q": (32, 32), "a.to_k": (32, 32), "a.ff.net.2": (32, 48)}
    rank = 4
    weights = {n: torch.randn(*s, generator=rng) for n, s in shapes.items()}
    layers = {n: QRDelta.zeros(orthonormal(s[0], rank, rng).float(), s[1]) for n, s in shapes.items()}
    wrappers = {n: QRWeightWrapper([layers[n]], [None]) for n in shapes}
    trainable = [p for w in wrappers.values() for p in w.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(layers[n].delta_r) for n in shapes}
    assert all(not b.requires_grad for w in wrappers.values() for b in w.buffers())  # Q is a frozen buffer
    x = torch.randn(5, 32, generator=rng)
    h = torch.nn.functional.linear(x, wrappers["a.to_q"](weights["a.to_q"])) + torch.nn.functional.linear(x, wrappers["a.to_k"](weights["a.to_k"]))
    torch.nn.functional.linear(torch.cat([h, h[:, :16]], 1), wrappers["a.ff.net.2"](weights["a.ff.net.2"])).sum().backward()
    assert all(layers[n].delta_r.grad is not None and layers[n].delta_r.grad.shape == (rank, s[1]) for n, s in shapes.items())
    assert all(layers[n].q.grad is None for n in shapes)
    count = sum(p.numel() for p in trainable)
    assert count == sum(rank * n for _, n in shapes.values())
    square = [n for n, (m, k) in shapes.items() if m == k]
    assert sum(layers[n].delta_r.numel() for n in square) * 2 == sum(rank * (m + k) for m, k in (shapes[n] for n in square))


def test_frozen_extra_per_target_is_q_alone(rng):
    """Beyond the base weight a target holds Q (m x r) and ΔR (r x n): no residual, no R, no m x n copy."""
    m, n, rank = 48, 32, 4
    wrapper = QRWeightWrapper([QRDelta.zeros(orthonormal(m, rank, rng).float(), n)], [None])
    assert [tuple(b.shape) for b in wrapper.buffers()] == [(m, rank)]
    assert [tuple(p.shape) for p in wrapper.parameters()] == [(rank, n)]
    assert wrapper.passive_memory_usage() == 4 * rank * (m + n)


@pytest.fixture
def store(tmp_path):
    return BasisStore(str(tmp_path / "bases"))


def test_second_training_on_the_same_base_loads_the_basis_from_disk(store, rng):
    weights = {"x.to_q": torch.randn(20, 12, generator=rng), "x.ff.net.2": torch.randn(12, 20, generator=rng)}
    first = TrainTargets.new(weights, 4, 4.0, True, store)
    stored = store.load(first.basis_id)
    assert set(stored) == set(weights)
    # Change what is on disk: a second run must return the file's Q, not a fresh decomposition.
    store.save(first.basis_id, {name: -q for name, q in stored.items()}, first.sketches)
    second = TrainTargets.new(weights, 4, 4.0, True, store)
    assert second.basis_id == first.basis_id
    for name in weights:
        assert torch.equal(second.layers[name].q, -first.layers[name].q)
        assert torch.equal(second.layers[name].delta_r, torch.zeros(4, weights[name].shape[1]))


@pytest.mark.parametrize("part", ["first half", "second half"])
def test_a_basis_half_trains_and_stores_only_its_rows(store, rng, part):
    rows = TrainConfig(rank=6, basis_part=part).trained_rows(6)
    assert rows == ((0, 3) if part == "first half" else (3, 6))
    outside = torch.ones(6, 12, dtype=torch.bool)
    outside[rows[0]:rows[1]] = False
    mask = torch.triu(torch.ones(6, 12, dtype=torch.float64)) * ~outside
    w = torch.randn(30, 12, generator=rng, dtype=torch.float64)
    layers = [QRDelta(orthonormal(10, 6, rng), torch.randn(6, 12, generator=rng, dtype=torch.float64), 1.5, True, rows) for _ in range(3)]
    x = torch.randn(4, 12, generator=rng, dtype=torch.float64)
    patched = lambda layer, rows: rows + 1.5 * layer.q @ (mask * layer.delta_r.detach())  # noqa: E731
    assert torch.allclose(QRWeightWrapper(layers[:1], [None])(w[:10]), patched(layers[0], w[:10]), rtol=0, atol=1e-12)  # a whole weight
    fused = QRWeightWrapper(layers, [(0, 10), (10, 10), (20, 10)])(w)  # q, k, v back to back: the batched path
    for i, layer in enumerate(layers):
        assert torch.allclose(fused[10 * i : 10 * (i + 1)], patched(layer, w[10 * i : 10 * (i + 1)]), rtol=0, atol=1e-12)
    torch.nn.functional.linear(x, QRWeightWrapper(layers[:1], [None])(w[:10])).square().sum().backward()
    assert torch.all(layers[0].delta_r.grad[outside] == 0) and torch.all(layers[0].delta_r.grad[mask.bool()] != 0)
    targets = TrainTargets.new({"x.to_q": torch.randn(20, 12, generator=rng)}, 6, 6.0, True, store, trained_rows=rows)
    with torch.no_grad():
        targets.layers["x.to_q"].delta_r.copy_(torch.randn(6, 12, generator=rng))
    stored = targets.to_adapter().targets["x.to_q"].delta_r
    assert not stored[outside].any() and torch.equal(stored[~outside], torch.triu(targets.layers["x.to_q"].delta_r.detach())[~outside])


def test_content_and_style_halves_add_to_orthogonal_outputs(store, rng):
    """Halves of one basis: the content adapter's delta and the style adapter's have orthogonal column spaces."""
    weights = {"x.to_q": torch.randn(24, 16, generator=rng)}
    deltas = []
    for part in ("first half", "second half"):
        targets = TrainTargets.new(weights, 8, 8.0, True, store, trained_rows=TrainConfig(rank=8, basis_part=part).trained_rows(8))
        with torch.no_grad():
            targets.layers["x.to_q"].delta_r.copy_(torch.randn(8, 16, generator=rng))
        t = targets.to_adapter().targets["x.to_q"]
        deltas.append(t.q.double() @ t.delta_r.double())
    overlap = torch.linalg.norm(deltas[0].T @ deltas[1]) / (torch.linalg.norm(deltas[0]) * torch.linalg.norm(deltas[1]))
    assert overlap < 1e-6  # Q is stored in float32: orthogonal to its precision


def test_a_basis_half_needs_rank_two(rng):
    with pytest.raises(AdapterError, match="Rank 1 has no half"):
        TrainConfig(rank=1, basis_part="second half")
    with pytest.raises(AdapterError, match="not a basis part"):
        TrainConfig(basis_part="third half")


def test_trained_adapter_stores_the_masked_delta_and_its_basis(store, rng):
    weights = {"x.to_q": torch.randn(20, 12, generator=rng)}
    targets = TrainTargets.new(weights, 4, 8.0, True, store)
    with torch.no_grad():
        targets.layers["x.to_q"].delta_r.copy_(torch.randn(4, 12, generator=rng))
    adapter = targets.to_adapter({"trigger_words": "<s>"})
    t = adapter.targets["x.to_q"]
    assert torch.equal(t.delta_r, torch.triu(targets.layers["x.to_q"].delta_r.detach()))
    assert adapter.scale == 2.0 and adapter.metadata["basis"] == targets.basis_id and adapter.metadata["trigger_words"] == "<s>"
    assert adapter.metadata["base_fingerprint"] == targets.base_fingerprint()
    resumed = TrainTargets.resume(adapter, weights, triangular=True)
    assert torch.equal(resumed.layers["x.to_q"].q, t.q) and torch.equal(resumed.layers["x.to_q"].delta_r, t.delta_r)


def test_rank_larger_than_a_layer_allows_is_refused_with_advice(store, rng):
    weights = {"x.to_q": torch.randn(20, 12, generator=rng), "x.small": torch.randn(6, 12, generator=rng)}
    with pytest.raises(AdapterError, match=r"Rank 8 is larger than layer x.small allows .* at most rank 6"):
        TrainTargets.new(weights, 8, 8.0, True, store)


FLUX_LIKE = [
    "transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_out.0",
    "transformer.transformer_blocks.0.attn.add_v_proj", "transformer.transformer_blocks.0.attn.to_add_out",
    "transformer.transformer_blocks.0.ff.net.0.proj", "transformer.transformer_blocks.0.ff.net.2",
    "transformer.transformer_blocks.0.ff_context.net.0.proj", "transformer.transformer_blocks.0.ff_context.net.2",
    "transformer.single_transformer_blocks.0.attn.to_k",
]
UNET_LIKE = [
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v",
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0",
    "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_0_proj",
    "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_2",
]
NEVER = [
    "transformer.transformer_blocks.0.norm1.linear", "transformer.single_transformer_blocks.0.proj_mlp",
    "transformer.single_transformer_blocks.0.proj_out", "transformer.proj_out", "transformer.context_embedder",
    "lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_down_blocks_0_attentions_0_proj_out",
    "lora_unet_down_blocks_0_resnets_0_time_emb_proj", "lora_unet_time_embedding_linear_1",
]


def test_paper_preset_finds_the_published_targets_in_both_spellings():
    regex = TrainConfig().target_matcher()
    assert select(FLUX_LIKE + UNET_LIKE + NEVER, regex) == FLUX_LIKE + UNET_LIKE


def test_attention_preset_leaves_the_mlp_out():
    regex = TrainConfig(target_preset="attention only").target_matcher()
    mlp = [n for n in FLUX_LIKE + UNET_LIKE if re.search(r"ff(_context)?[._]net", n)]
    assert select(FLUX_LIKE + UNET_LIKE + NEVER, regex) == [n for n in FLUX_LIKE + UNET_LIKE if n not in mlp]


def test_custom_pattern_is_used_and_a_bad_one_is_explained():
    regex = TrainConfig(target_preset="custom pattern", target_pattern=r"attn1?[._]to_q$").target_matcher()
    assert select(FLUX_LIKE + UNET_LIKE, regex) == [FLUX_LIKE[0], UNET_LIKE[0]]
    with pytest.raises(AdapterError, match="is not closed"):
        TrainConfig(target_preset="custom pattern", target_pattern="attn(").target_matcher()
    with pytest.raises(AdapterError, match="the pattern is empty"):
        TrainConfig(target_preset="custom pattern").target_matcher()


def test_every_setting_has_its_own_help_text_and_each_offered_preset_picks_the_layers_it_names():
    from dataclasses import fields

    helps = {f.name: settings.help_text(f.name) for f in fields(TrainConfig)}
    assert all(len(text) > 20 for text in helps.values()), helps
    assert len(set(helps.values())) == len(helps)  # no tooltip copied onto another setting
    mlp = [n for n in FLUX_LIKE + UNET_LIKE if re.search(r"ff(_context)?[._]net", n)]
    picks = {  # what each preset's name promises, written out here rather than derived from the presets
        "attention + MLP (paper)": FLUX_LIKE + UNET_LIKE,
        "attention only": [n for n in FLUX_LIKE + UNET_LIKE if n not in mlp],
        "custom pattern": [n for n in FLUX_LIKE + UNET_LIKE if n.endswith("to_q")],  # the pattern below
    }
    offered = settings.limits("target_preset")["options"]
    assert sorted(offered) == sorted(picks)
    for name in offered:
        regex = TrainConfig(target_preset=name, target_pattern="to_q$").target_matcher()
        assert select(FLUX_LIKE + UNET_LIKE + NEVER, regex) == picks[name], name
    assert TrainConfig().scale_alpha == 64.0 and TrainConfig(rank=8).scale_alpha == 8.0  # alpha 0: alpha = rank, s = 1
    assert TrainConfig(rank=8, alpha=4.0).scale_alpha == 4.0


def test_defaults_are_the_reference_setup():
    from comfyui_qrlora.qrlora_core.training.objective import REFERENCE

    c = TrainConfig()
    assert (c.rank, c.scale_alpha, c.learning_rate, c.steps, c.grad_accumulation, c.max_grad_norm, c.weight_decay, c.optimizer) == (
        64, 64.0, 1e-4, 1000, 4, 1.0, 1e-4, "AdamW")
    assert c.triangular and c.objective == REFERENCE and c.guidance == 1.0 and c.training_dtype == "bf16"
    recorded = c.recorded()
    assert recorded["objective"] == REFERENCE and recorded["max_grad_norm"] == 1.0 and "filename_prefix" not in recorded


@pytest.mark.parametrize("name", ["learning_rate", "alpha", "guidance", "weight_decay", "max_grad_norm"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_settings_are_refused_in_one_sentence(name, value):
    with pytest.raises(AdapterError, match=rf"^{name} is {value}, which is not a number training can use: enter a finite value"):
        TrainConfig(**{name: value})


# ------------------------------------------------------------ objective


def test_prediction_mse_is_the_velocity_loss_of_a_flow_model(rng):
    from comfyui_qrlora.qrlora_core.training.objective import denoised_mse, flow_sigmas, prediction_mse

    x0, noise, velocity = (torch.randn(3, 4, 5, 5, generator=rng, dtype=torch.float64) for _ in range(3))
    sigma = flow_sigmas(torch.rand(3, generator=rng, dtype=torch.float64))
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    denoised = x_t - s * velocity  # a flow model's denoiser
    expected = ((velocity - (noise - x0)) ** 2).mean()
    assert float(prediction_mse(denoised, x0, -sigma)) == pytest.approx(float(expected), rel=1e-5)
    assert float(denoised_mse(denoised, x0)) == pytest.approx(float((s**2 * (velocity - (noise - x0)) ** 2).mean()), rel=1e-5)


def test_flow_sigmas_are_the_reference_training_grid():
    from comfyui_qrlora.qrlora_core.training.objective import discrete_timesteps, flow_sigmas

    u = torch.tensor([0.0, 0.5, 0.12345, 1 - 1e-12], dtype=torch.float64)
    assert flow_sigmas(u).tolist() == pytest.approx([1.0, 0.5, 0.877, 0.001])  # the scheduler's 1000 sigmas, uniformly
    assert discrete_timesteps(u, 1000).tolist() == [0, 500, 123, 999]


# ------------------------------------------------------------ step loop


def _loop(parameters, **overrides):
    from comfyui_qrlora.qrlora_core.training.step_loop import StepLoop

    settings_ = {"optimizer": "SGD", "learning_rate": 1.0, "weight_decay": 0.0, "grad_accumulation": 3, "max_grad_norm": 0.0, "seed": 0}
    settings_.update(overrides)
    return StepLoop(parameters, **settings_)


def test_accumulated_step_uses_the_mean_gradient_and_reports_the_mean_loss(rng):
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    targets = [torch.randn(4, generator=rng, dtype=torch.float64) for _ in range(3)]
    it = iter(targets)
    loss = _loop([p]).step(1, lambda draws: ((p - next(it)) ** 2).sum())
    assert loss == pytest.approx(float(sum((t**2).sum() for t in targets) / 3))
    assert torch.allclose(p.detach(), 2 * torch.stack(targets).mean(0))  # p - lr * mean grad, grad = 2 (p - t)


def test_clipping_limits_the_global_gradient_norm(rng):
    p = torch.nn.Parameter(torch.zeros(8, dtype=torch.float64))
    direction = torch.randn(8, generator=rng, dtype=torch.float64)
    _loop([p], grad_accumulation=1, max_grad_norm=0.5).step(1, lambda draws: -(p * direction * 100).sum())
    assert float(p.detach().norm()) == pytest.approx(0.5)  # lr 1 times a gradient clipped to norm 0.5
    assert torch.allclose(p.detach() / p.detach().norm(), direction / direction.norm())


def test_non_finite_loss_stops_before_the_update(rng):
    from comfyui_qrlora.qrlora_core.training.step_loop import NonFiniteLoss

    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    losses = iter([torch.tensor(1.0, dtype=torch.float64), torch.tensor(float("nan"), dtype=torch.float64)])
    with pytest.raises(NonFiniteLoss):
        _loop([p], grad_accumulation=2).step(7, lambda draws: (p.sum() * next(losses)))
    assert torch.equal(p.detach(), torch.ones(3, dtype=torch.float64)) and p.grad is None


def test_draws_are_seeded_and_independent_of_the_global_rng():
    from comfyui_qrlora.qrlora_core.training.step_loop import Draws

    def sample(seed):
        d = Draws(seed)
        torch.manual_seed(seed + 1)  # must not matter
        return d.images([list(range(6)), list(range(6, 10))], 3), d.uniform(2).tolist(), d.noise(torch.zeros(2, 3)).tolist()

    assert sample(5) == sample(5) and sample(5) != sample(6)


# ------------------------------------------------------------ out-of-place residuals


class _Residual(torch.nn.Module):
    """Like ComfyUI's Flux blocks: a residual added in place after a LayerNorm saved its input."""

    def __init__(self, width=6):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x, scale: float = 2.0, *, bias=0.0):
        h = self.norm(x)
        x += self.linear(h) * scale
        x -= bias
        counts = [1]
        counts += [2]  # a list: must stay an in-place extend
        x *= len(counts)
        return x

    def halve(self, x):
        return x / 2


class _Child(_Residual):
    def forward(self, x, scale: float = 2.0, *, bias=0.0):
        h = self.norm(x)
        x += self.linear(h) * scale
        x *= 2
        x = super().halve(x)  # super() still works in the rewritten function (its __class__ cell is kept)
        return x


def test_rewritten_forward_trains_where_the_in_place_one_cannot(rng):
    from comfyui_qrlora.qrlora_core.training.out_of_place import OutOfPlaceForwards

    torch.manual_seed(0)
    model = torch.nn.Sequential(_Residual(), _Child())
    x = torch.randn(3, 6, generator=rng)
    with pytest.raises(RuntimeError):  # autograd refuses the in-place residual as shipped
        model(x.clone().requires_grad_(True)).sum().backward()
    rewrites = OutOfPlaceForwards(model)
    assert rewrites.classes == {_Residual, _Child} and all("forward" in vars(m) for m in model)
    leaf = x.clone().requires_grad_(True)
    out = model(leaf)
    out.sum().backward()
    with torch.no_grad():  # outside autograd it computes the same, in place
        y = x.clone()
        assert model[0](y) is y  # the residual still lands in the caller's tensor
        assert torch.allclose(model[1](y), out)
    rewrites.restore()
    assert not any("forward" in vars(m) for m in model)
    reference = x.clone().double().requires_grad_(True)  # the same math written out of place, in float64
    h = model[0].double()
    r = (h.linear(h.norm(reference)) * 2.0 + reference) * 2
    c = model[1].double()
    r2 = (c.linear(c.norm(r)) * 2.0 + r) * 2 / 2
    r2.sum().backward()
    assert torch.allclose(leaf.grad.double(), reference.grad, atol=1e-5)


def test_rewritten_source_is_python_3_10_syntax_and_keeps_line_numbers():
    import ast

    from comfyui_qrlora.qrlora_core.training.out_of_place import rewritten

    new = rewritten(_Residual.forward)
    assert new.__code__.co_firstlineno == _Residual.forward.__code__.co_firstlineno
    assert new.__defaults__ == _Residual.forward.__defaults__ and new.__kwdefaults__ == _Residual.forward.__kwdefaults__
    source = new.__qrlora_source__
    assert "x += " not in source and "x = __qrlora_out_of_place__.add(x, " in source and "counts = __qrlora_out_of_place__.add(counts, " in source
    ast.parse(source, feature_version=(3, 10))  # nothing newer than the oldest Python the pack supports
    assert rewritten(torch.nn.Linear.forward) is None  # nothing to rewrite: left alone

@pytest.mark.parametrize("batch, accumulation, processes", [(1, 4, 2), (2, 3, 2), (4, 1, 2), (3, 1, 2), (1, 1, 2), (2, 2, 4), (5, 3, 3)])
def test_data_parallel_shares_every_sample_of_a_step_exactly_once(batch, accumulation, processes, rng):
    from comfyui_qrlora.qrlora_core.training.distributed import StepShare

    shares = [StepShare(batch, accumulation, rank=k, world=processes) for k in range(processes)]
    for step in range(3):
        sizes = [int(torch.randint(1, batch + 1, (1,), generator=rng)) for _ in range(accumulation)]  # small buckets draw fewer
        for size in sizes:
            taken = [j for share in shares for j in share.mine(size)]
            assert sorted(taken) == list(range(size))
    per_process = [sum(len(s.mine(batch)) for _ in range(accumulation)) for s in shares]
    assert max(per_process) - min(per_process) <= 1  # the work of a full step is split evenly
    assert shares[0].idle() == max(0, processes - batch * accumulation)


def test_settings_of_another_type_are_coerced_or_refused_in_a_sentence():
    """/prompt and train.py may hand any JSON; a value of another type used to fail in the run (int + str)."""
    assert TrainConfig(steps="12", alpha=3).steps == 12 and isinstance(TrainConfig(alpha=3).alpha, float)
    for bad, words in ((dict(steps="ten"), "steps is 'ten' (str), not an int"), (dict(steps=True), "steps is True (bool), not an int"),
                       (dict(gradient_checkpointing="yes"), "gradient_checkpointing is 'yes' (str), not a bool"),
                       (dict(trigger_words="<s>\ud800"), "cannot be written into a file (U+D800")):
        with pytest.raises(AdapterError, match=re.escape(words)):
            TrainConfig(**bad)


def test_plain_lora_adds_s_up_down_learns_both_factors_and_starts_at_the_base(rng):
    """The bench's plain LoRA (TrainConfig.plain_lora) against a float64 reference: W + s·up·down, LoRA's initialisation."""
    w = {"a": torch.randn(24, 16, generator=rng, dtype=torch.float64), "b": torch.randn(12, 16, generator=rng, dtype=torch.float64)}
    targets = TrainTargets.plain_lora({n: x.float() for n, x in w.items()}, rank=4, alpha=8.0, seed=3)
    layer = targets.layers["a"]
    assert not layer.q.abs().any() and 0 < layer.delta_r.abs().max() <= 1 / 16**0.5  # up = 0, down ~ U(±1/sqrt(n))
    assert torch.equal(QRWeightWrapper([layer], [None])(w["a"].float()), w["a"].float())  # step 0 is the base
    assert len(targets.parameters()) == 4 and all(p.requires_grad for p in targets.parameters())
    up, down = torch.randn(24, 4, generator=rng, dtype=torch.float64), torch.randn(4, 16, generator=rng, dtype=torch.float64)
    layer64 = type(layer)(up, down, scale=2.0)
    x = torch.randn(5, 16, generator=rng, dtype=torch.float64)
    y = x @ QRWeightWrapper([layer64], [None])(w["a"]).T
    assert torch.allclose(y, x @ (w["a"] + 2.0 * up @ down).T, rtol=0, atol=1e-12)
    y.square().sum().backward()  # both factors learn, the basis-free delta has no triangular mask
    assert layer64.q.grad.abs().min() > 0 and torch.tril(layer64.delta_r.grad, -1).abs().max() > 0
    with torch.no_grad():
        layer.q.copy_(torch.randn(24, 4, generator=rng))  # a trained up
    adapter = targets.to_adapter()
    saved = adapter.targets["a"]
    assert not adapter.shared_basis
    assert torch.allclose(saved.q.double().T @ saved.q.double(), torch.eye(4, dtype=torch.float64), atol=1e-6)  # a file's Q is orthonormal
    assert torch.allclose(saved.q.double() @ saved.delta_r.double(), layer.q.detach().double() @ layer.delta_r.detach().double(), atol=1e-5)


def test_moving_average_is_saved_in_place_of_the_last_values_bias_corrected(store, rng):
    w = {"a": torch.randn(24, 16, generator=rng)}
    targets = TrainTargets.new(w, rank=4, alpha=4.0, triangular=False, store=store)
    (p,) = targets.parameters()
    history = []
    with torch.no_grad():
        for _ in range(5):
            p.copy_(torch.randn(p.shape, generator=rng))
            history.append(p.clone().double())
            targets.update_average(0.8)
    weights = torch.tensor([0.2 * 0.8 ** (4 - i) for i in range(5)], dtype=torch.float64)
    expected = sum(wt * h for wt, h in zip(weights, history)) / weights.sum()  # weights.sum() = 1 - 0.8^5
    assert torch.allclose(targets.to_adapter().targets["a"].delta_r.double(), expected, rtol=0, atol=1e-6)


def test_noise_range_must_be_a_non_empty_part_of_zero_to_one():
    assert TrainConfig(noise_min=0.5, noise_max=1.0).noise_min == 0.5
    for low, high in ((0.6, 0.4), (0.5, 0.5), (-0.1, 1.0), (0.0, 1.5)):
        with pytest.raises(AdapterError, match="noise range"):
            TrainConfig(noise_min=low, noise_max=high)


@pytest.mark.parametrize("entry, value", [
    ("training_data", "abc"), ("image_captions", "[Infinity]"), ("image_captions", "[" * 100000), ("image_captions", "[-1]"),
    ("image_captions", "[1]"), ("image_captions", "[0.5]"), ("captions", '["x"]'), ("captions", '{"x": 1}'), ("latent", "float8_e4m3fn"),
    ("latent", "int64"),
])
def test_a_damaged_training_data_file_is_refused_in_one_sentence(tmp_path, entry, value):
    """train.py --data: one image, one caption; each entry spoilt in turn (the latent: NaN in float8, which has no isfinite,
    or integers, which no model takes)."""
    from comfyui_qrlora.qrlora_core.formats import atomic_save
    from comfyui_qrlora.qrlora_core.training import datafile

    latent = {"float8_e4m3fn": torch.full((1, 4, 8, 8), float("nan")).to(torch.float8_e4m3fn),
              "int64": torch.zeros(1, 4, 8, 8, dtype=torch.int64)}.get(value, torch.zeros(1, 4, 8, 8))
    metadata = {"qrlora.training_data": "1", "qrlora.captions": '[{"text": "a", "options": {}}]', "qrlora.image_captions": "[0]"}
    metadata.update({"qrlora." + entry: value} if entry != "latent" else {})
    path = str(tmp_path / "data.safetensors")
    atomic_save({"image.0": latent, "caption.0": torch.zeros(1, 3, 8)}, path, metadata)
    with pytest.raises(AdapterError, match="^data.safetensors: .*train.py --save-data"):
        datafile.load(path)
