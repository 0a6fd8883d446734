"""The files of the LoRA ecosystem, against float64: stock-loader keys, Q-and-R checkpoints,
the reference layout, and modelspec metadata."""

import json

import pytest
import safetensors
import safetensors.torch
import torch

from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.errors import AdapterError
from comfyui_qrlora.qrlora_core.formats import export_lora, is_q_and_r, load_adapter, save_native
from comfyui_qrlora.qrlora_core.basis import BasisStore
from comfyui_qrlora.qrlora_core.metadata import base_of, modelspec
from comfyui_qrlora.qrlora_core.patch import delta
from comfyui_qrlora.qrlora_core.reference_formats import reference_tensors, resolve_q_and_r
from comfyui_qrlora.qrlora_core.stock_keys import Refused, read_layer, state_dict

FLUX_NAMES = ["transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_out.0", "transformer.single_transformer_blocks.1.proj_mlp"]


def decaying(m, n, rng, p=1.0):
    """A weight with a decaying spectrum, so its top-r part is well defined."""
    u, _ = torch.linalg.qr(torch.randn(m, min(m, n), generator=rng, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, min(m, n), generator=rng, dtype=torch.float64))
    s = torch.arange(1, min(m, n) + 1, dtype=torch.float64) ** -p
    return ((u * s) @ v.T).to(torch.float32)


def top_part(w, rank):
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]


@pytest.fixture
def weights(rng):
    return {n: decaying(24, 16, rng) for n in FLUX_NAMES}


def adapter_on(weights, rng, rank=4, alpha=2.0, triangular=True, metadata=None):
    targets = {}
    for name, w in weights.items():
        b = decompose(w, rank, alpha)
        d = torch.randn(rank, w.shape[1], generator=rng) * 0.1
        targets[name] = QRTarget(q=b.q, delta_r=torch.triu(d) if triangular else d)
    return QRLoRA(targets, rank=rank, alpha=alpha, format="native", metadata=metadata or {})


# ------------------------------------------------------------ what the stock loaders read


@pytest.mark.parametrize("triangular", [True, False])
def test_native_file_reads_back_per_layer_with_its_scale(tmp_path, weights, rng, triangular):
    adapter = adapter_on(weights, rng, alpha=3.0, triangular=triangular)
    path = str(tmp_path / "a.safetensors")
    save_native(adapter, path)
    tensors = safetensors.torch.load_file(path)
    accounted = set()
    for name, t in adapter.targets.items():
        layer = read_layer(name, tensors)
        assert layer.scale == adapter.scale == 0.75
        assert torch.equal(layer.q, t.q) and torch.equal(layer.delta_r, t.delta_r)
        accounted |= layer.keys
    assert accounted == tensors.keys(), "every tensor of the file belongs to a layer (none is logged as not loaded)"


def test_published_layer_has_scale_one_or_the_stock_alpha(weights, rng):
    name = FLUX_NAMES[0]
    b = decompose(weights[name], 4)
    d = torch.randn(4, 16, generator=rng)
    tensors = {f"{name}.lora.q.weight": b.q, f"{name}.lora.base_r.weight": b.r, f"{name}.lora.delta_r.weight": d}
    layer = read_layer(name, tensors)
    assert layer.scale == 1.0 and torch.equal(layer.delta_r, d) and layer.keys == tensors.keys()
    assert read_layer(name, tensors, alpha=8.0).scale == 2.0
    assert read_layer(FLUX_NAMES[1], tensors) is None


def test_compact_and_scale_less_layers_are_refused_with_a_reason(tmp_path, weights, rng):
    adapter = adapter_on(weights, rng)
    path = str(tmp_path / "c.safetensors")
    save_native(adapter, path, basis_id="r4-abc")
    tensors = safetensors.torch.load_file(path)
    with pytest.raises(Refused, match="compact"):
        read_layer(FLUX_NAMES[0], tensors)
    save_native(adapter, path)
    tensors = {k: v for k, v in safetensors.torch.load_file(path).items() if not k.endswith(".qr.scale")}
    with pytest.raises(Refused, match="alpha is unknown"):
        read_layer(FLUX_NAMES[0], tensors)
    for bad in (float("nan"), 0.0, -0.5):  # 0 would silently change nothing, a negative scale turn the delta around
        tensors[FLUX_NAMES[0] + ".qr.scale"] = torch.tensor(bad, dtype=torch.float64)
        with pytest.raises(Refused, match="not one positive finite number"):
            read_layer(FLUX_NAMES[0], tensors)


def test_state_dict_for_hooks_reads_back_to_the_same_patch(weights, rng):
    adapter = adapter_on(weights, rng, alpha=6.0, triangular=False)
    tensors = state_dict(adapter)
    for name, t in adapter.targets.items():
        layer = read_layer(name, tensors)
        assert layer.q is t.q and layer.delta_r is t.delta_r and layer.scale == adapter.scale


# ------------------------------------------------------------ the reference's Q-and-R checkpoints


def q_and_r_tensors(weights, rng, rank=4):
    tensors, pairs = {}, {}
    for name, w in weights.items():
        b = decompose(w, rank)
        q_t, r_t = b.q + 0.03 * torch.randn(b.q.shape, generator=rng), b.r + 0.03 * torch.randn(b.r.shape, generator=rng)
        stem = name + ".to_out.0" if name.endswith(".to_out.0") else name
        tensors[f"{stem}.lora.up.weight"], tensors[f"{stem}.lora.down.weight"] = q_t, r_t
        pairs[name] = (q_t, r_t)
    return tensors, pairs


def test_q_and_r_update_is_trained_product_minus_the_base_top_part(weights, rng):
    tensors, pairs = q_and_r_tensors(weights, rng)
    assert is_q_and_r(tensors)
    adapter, missing = resolve_q_and_r(tensors, weights.get, "qr.safetensors")
    assert not missing and adapter.scale == 1.0 and not adapter.shared_basis
    for name, (q_t, r_t) in pairs.items():
        want = q_t.double() @ r_t.double() - top_part(weights[name], 4)
        got = delta(adapter.targets[name].q, adapter.targets[name].delta_r, adapter.scale, torch.float64)
        assert torch.allclose(got, want, atol=1e-6), f"{name}: {(got - want).abs().max():.2e}"


def test_plain_lora_pairs_are_not_taken_for_q_and_r(tmp_path, weights, rng):
    tensors, _ = q_and_r_tensors({FLUX_NAMES[0]: weights[FLUX_NAMES[0]]}, rng)
    assert not is_q_and_r(tensors)  # no doubled to_out.0: an ordinary diffusers LoRA for all we know
    safetensors.torch.save_file(tensors, str(tmp_path / "plain.safetensors"))
    with pytest.raises(AdapterError, match="ordinary LoRA"):
        load_adapter(str(tmp_path / "plain.safetensors"))


def test_loading_a_q_and_r_file_without_a_model_says_to_connect_one(tmp_path, weights, rng):
    tensors, _ = q_and_r_tensors(weights, rng)
    safetensors.torch.save_file(tensors, str(tmp_path / "qr.safetensors"))
    with pytest.raises(AdapterError, match="Q-and-R checkpoint: load it with Load QR-LoRA and connect the base model"):
        load_adapter(str(tmp_path / "qr.safetensors"))


def test_q_and_r_for_another_model_is_refused(weights, rng):
    tensors, _ = q_and_r_tensors(weights, rng)
    with pytest.raises(AdapterError, match="another base model"):
        resolve_q_and_r(tensors, lambda name: torch.zeros(8, 8), "qr.safetensors")


# ------------------------------------------------------------ the reference layout


def test_reference_layout_runs_as_the_reference_computes_it_and_reloads(tmp_path, weights, rng):
    adapter = adapter_on(weights, rng, alpha=8.0, triangular=False)  # s = 2, folded into ΔR
    tensors, not_triangular = reference_tensors(adapter, weights.get)
    assert not_triangular == len(weights)
    path = str(tmp_path / "ref.safetensors")
    safetensors.torch.save_file(tensors, path)
    again = load_adapter(path)
    assert again.format == "published" and again.scale == 1.0
    for name, w in weights.items():
        q = tensors[f"{name}.lora.q.weight"].double()
        base_r, delta_r = tensors[f"{name}.lora.base_r.weight"].double(), tensors[f"{name}.lora.delta_r.weight"].double()
        residual = w.double() - q @ base_r  # what the reference's scripts keep frozen
        reference_layer = residual + q @ (base_r + delta_r)  # and what their layer computes
        want = w.double() + delta(adapter.targets[name].q, adapter.targets[name].delta_r, adapter.scale, torch.float64)
        assert torch.allclose(reference_layer, want, atol=1e-6)
        assert torch.allclose(delta(again.targets[name].q, again.targets[name].delta_r, 1.0, torch.float64), want - w.double(), atol=1e-6)
        assert torch.allclose(q @ base_r, top_part(w, 4), atol=1e-5)  # Q R is the top-r part of W


def test_reference_layout_refuses_mixed_bases_and_unet_names(weights, rng):
    adapter = adapter_on(weights, rng)
    adapter.shared_basis = False
    with pytest.raises(AdapterError, match="one basis per layer"):
        reference_tensors(adapter, weights.get)
    unet = QRLoRA({"lora_unet_mid_block_attentions_0_proj_in": next(iter(adapter.targets.values()))}, rank=4, alpha=4.0, format="native")
    with pytest.raises(AdapterError, match="Flux and SD3"):
        reference_tensors(unet, lambda name: torch.zeros(24, 16))


# ------------------------------------------------------------ modelspec


@pytest.mark.parametrize("names,shape,base", [
    (["transformer.single_transformer_blocks.0.attn.to_q"], (8, 8), "flux"),
    (["transformer.transformer_blocks.0.attn.add_q_proj"], (8, 8), "sd3"),
    (["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"], (640, 2048), "sdxl"),
    (["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"], (320, 768), "sd1"),
    (["lora_unet_down_blocks_0_attentions_0_proj_in"], (8, 8), None),  # SD1.x or SD2.x: the width would tell
    (["lora_unet_down_blocks_1_attentions_0_proj_in"], (8, 8), "sdxl"),
    (["diffusion_model.foo"], (8, 8), None),
])
def test_base_architecture_from_layer_names(names, shape, base):
    adapter = QRLoRA({n: QRTarget(q=torch.zeros(shape[0], 1), delta_r=torch.zeros(1, shape[1])) for n in names}, rank=1, alpha=1.0, format="native")
    assert base_of(adapter) == base


def test_saved_and_exported_files_carry_modelspec(tmp_path, weights, rng):
    adapter = adapter_on(weights, rng, metadata={"trigger_words": "<s> style",
                                                 "merged_from": json.dumps([{"source": "a.safetensors", "weight": 1.0}, {"source": "b.safetensors", "weight": 0.5}])})
    for write, name, network in ((save_native, "mine.safetensors", "qr-lora"), (export_lora, "exported.safetensors", "lora")):
        path = str(tmp_path / name)
        write(adapter, path)
        with safetensors.safe_open(path, "pt") as f:
            meta = f.metadata()
        assert meta["modelspec.sai_model_spec"] == "1.0.0"
        assert meta["modelspec.architecture"] == f"flux-1-dev/{network}"
        assert meta["modelspec.title"] == name.split(".")[0] and meta["modelspec.implementation"]
        assert meta["modelspec.trigger_phrase"] == "<s> style"
        assert meta["modelspec.merged_from"] == "a.safetensors, b.safetensors"
    assert modelspec(adapter_on(weights, rng), "x.safetensors", "qr-lora").keys().isdisjoint({"modelspec.trigger_phrase", "modelspec.merged_from"})


def test_basis_files_carry_modelspec(tmp_path, weights, rng):
    store = BasisStore(str(tmp_path))
    store.save("r4-test", {n: decompose(w, 4).q for n, w in weights.items()}, {})
    with safetensors.safe_open(store.path("r4-test"), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "flux-1-dev/qr-lora-basis" and meta["modelspec.title"] == "r4-test"
    assert meta["modelspec.sai_model_spec"] == "1.0.0" and meta["qrlora.basis_id"] == "r4-test"
