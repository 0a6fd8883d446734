"""Fitting a mix (ZipLoRA's mergers, dev/bench/fitted_mix_session.py) inside ComfyUI's real ModelPatcher, in this process."""

import pytest
import torch

from devkit import models

from integration.test_train_inprocess import forward, inputs, train

CONTENT_LAYERS = "down_blocks.*attn2_to_(k|v)$"  # the content adapter on a few layers, the style adapter on every one


def pair(pack, model, rng):
    """(content adapter, style adapter, each one's (latents, positive)): two real trainings on one base."""
    data = [inputs("sd15", rng, images=2), inputs("sd15", rng, images=2)]
    content = train(pack, model, *data[0], steps=3, target_preset="custom pattern", target_pattern=CONTENT_LAYERS).args[0]
    style = train(pack, model, *data[1], steps=3, seed=4).args[0]
    return content, style, data


def test_fit_rescales_columns_and_leaves_the_base_alone(pack, folders, rng):
    from bench.fitted_mix_session import fit_mix

    base = models.patcher("sd15")
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    reference = forward(base, "sd15", torch.Generator().manual_seed(seed))
    content, style, data = pair(pack, base, rng)
    fitted, losses, _ = fit_mix(base, [content, style], data, steps=4, overlap_weight=0.5, seed=seed % 1000, batch_size=2)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert set(fitted[0].targets) == set(content.targets) and set(fitted[1].targets) == set(style.targets)
    moved = 0
    for before, after in ((content, fitted[0]), (style, fitted[1])):
        for name, t in before.targets.items():
            old, new = t.delta_r.double(), after.targets[name].delta_r.double()
            columns = old.abs().amax(0) > 0
            ratio = new[:, columns] / old[:, columns].where(old[:, columns] != 0, torch.ones(()))
            merger = ratio[old[:, columns].abs().argmax(0), torch.arange(int(columns.sum()))]
            assert torch.allclose(new[:, columns], old[:, columns] * merger[None, :], atol=1e-6), name  # one factor per input column
            moved += bool((merger - 1).abs().max() > 1e-4)
    assert moved > 0  # four steps at lr 0.01 move the mergers off 1
    assert not any(getattr(m, "weight_function", None) for m in base.model.modules())
    assert torch.equal(forward(base, "sd15", torch.Generator().manual_seed(seed)), reference)  # the shared model is the base again


def test_overlap_weight_pushes_the_shared_columns_apart(pack, folders, rng):
    from bench.fitted_mix_session import fit_mix

    base = models.patcher("sd15")
    content, style, data = pair(pack, base, rng)
    fitted, _, _ = fit_mix(base, [content, style], data, steps=6, learning_rate=0.05, overlap_weight=100.0, batch_size=2)
    shared = [n for n in content.targets if n in style.targets]
    assert shared
    for name in shared:
        m = [after.targets[name].delta_r.double().abs().sum(0) / before.targets[name].delta_r.double().abs().sum(0).clamp_min(1e-30)
             for before, after in ((content, fitted[0]), (style, fitted[1]))]
        assert float((m[0] * m[1]).mean()) < 0.9, name  # from 1 at the start


def test_adapters_of_other_bases_are_refused_in_words(pack, folders, rng):
    from bench.fitted_mix_session import fit_mix
    from comfyui_qrlora.qrlora_core.errors import AdapterError

    base = models.patcher("sd15")
    content, style, data = pair(pack, base, rng)
    style.targets = {n: type(t)(q=torch.linalg.qr(torch.randn(t.q.shape, generator=rng)).Q, delta_r=t.delta_r, fingerprint=t.fingerprint)
                     for n, t in style.targets.items()}
    with pytest.raises(AdapterError, match="not trained on one basis"):
        fit_mix(base, [content, style], data, steps=1, batch_size=2)


def test_each_sample_is_held_to_its_own_adapter(pack, folders, rng):
    """With the content adapter's ΔR zeroed, the mix is the style adapter alone: a batch of style images costs 0,
    a batch of content images (whose teacher is then the base model) does not."""
    from comfyui_qrlora.integration.training.session import Batch
    from bench.fitted_mix_session import ZipSession
    from comfyui_qrlora.qrlora_core.training import TrainConfig

    base = models.patcher("sd15")
    content, style, data = pair(pack, base, rng)
    content.targets = {n: type(t)(q=t.q, delta_r=torch.zeros_like(t.delta_r), fingerprint=t.fingerprint) for n, t in content.targets.items()}
    config = TrainConfig(steps=1, learning_rate=0.01, batch_size=2, grad_accumulation=1, training_dtype="fp32", gradient_checkpointing=False)
    with ZipSession(base, config, [content, style], data, overlap_weight=0.0) as session, torch.no_grad():
        for owner, want_zero in ((1, True), (0, False)):
            images = [i for i, o in enumerate(session.owner) if o == owner]
            sigma = torch.tensor([0.5, 0.9]) * float(session.sampling.sigma_max)
            x0 = torch.cat([session.x0[i] for i in images])
            noise = torch.randn(x0.shape, generator=rng)
            batches = [Batch([i], session.x0[i], noise[j:j + 1], sigma[j:j + 1], session.conds_for(i)) for j, i in enumerate(images)]
            loss = sum(float(session.loss(b)) for b in batches)
            assert (loss == 0.0) == want_zero, (owner, loss)
