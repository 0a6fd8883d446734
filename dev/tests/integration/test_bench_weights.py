"""The memory bench's random FLUX weights (bench/flux.py): every layer the session trains gets a decaying spectrum.

The bench's Gaussian weights have flat spectra, which send the basis
build to its slow exact path; `give_decaying_spectra` gives the session's
targets the spectrum of a trained checkpoint instead, so the basis
converges as it would on a real model. These tests check that on ComfyUI's
own Flux class (the bench's smoke size), bf16 and fp8: the spectrum is the
one asked for, the session's targets are all covered, non-targets are
left alone, and the basis build takes its iterative path for every target.
"""

import importlib

import pytest
import torch

from bench.flux import SMOKE, build_model, give_decaying_spectra

RANK = 16
POWER = 0.5


def _flux(dtype, compute=None):
    model = build_model(SMOKE, torch.device("cpu"), dtype=dtype, compute_dtype=compute, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    return model, before


def _targets(pack, model):
    import comfy.model_patcher

    from comfyui_qrlora.integration.training import session as train_session
    from comfyui_qrlora.qrlora_core.training import TrainConfig

    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    where, _ = train_session.choose_targets(patcher, TrainConfig(rank=RANK))
    return where, train_session.base_weights(patcher, where)


@pytest.mark.parametrize("base", ["bf16", "fp8"])
def test_every_trained_layer_gets_the_decaying_spectrum(pack, base, monkeypatch):
    from comfyui_qrlora.integration import keymap

    decompose = importlib.import_module("comfyui_qrlora.qrlora_core.decompose")  # the module, not the function of that name
    dtype, compute = (torch.bfloat16, None) if base == "bf16" else (torch.float8_e4m3fn, torch.bfloat16)
    model, before = _flux(dtype, compute)
    give_decaying_spectra(model, SMOKE, keymap, power=POWER)
    where, weights = _targets(pack, model)
    assert len(where) == len(SMOKE.targets())  # the session trains exactly the layers the bench gave spectra

    touched = {key for key, _ in where.values()}
    after = model.state_dict()
    for key, value in before.items():  # weights that hold no target are the Gaussian fill still
        if key not in touched:
            assert torch.equal(after[key].view(torch.uint8), value.view(torch.uint8)), key

    tolerance = 1e-2 if base == "bf16" else 0.15  # bf16 rounding; fp8 keeps 3 mantissa bits
    for name, w in weights.items():
        m, n = w.shape
        k = torch.arange(1, min(m, n) + 1, dtype=torch.float64) ** -POWER
        wanted = k * (m**0.5 / k.norm())  # the Gaussian fill's Frobenius norm
        got = torch.linalg.svdvals(w.to(torch.float64))
        assert torch.allclose(got[: 2 * RANK], wanted[: 2 * RANK], rtol=tolerance), name

    def no_fallback(*args, **kwargs):
        raise AssertionError("a target's spectrum was too flat for the iterative basis build")

    monkeypatch.setattr(decompose, "_svd_seeded_top", no_fallback)
    bases = decompose.decompose_many(weights, RANK, method="subspace")
    for name, w in weights.items():
        exact = torch.linalg.svd(w.to(torch.float64), full_matrices=False)[0][:, :RANK]
        assert decompose.subspace_error(bases[name].q, exact) < 1e-3, name
