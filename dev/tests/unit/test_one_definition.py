"""Facts the core defines once: basis ids (files saved earlier keep loading), the rank check, the layer shapes QR-LoRA targets."""

import os

import pytest
import torch

from comfyui_qrlora.qrlora_core import AdapterError, QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.basis import BasisStore, basis_id
from comfyui_qrlora.qrlora_core.decompose import check_rank, decompose_many, is_matrix_weight
from comfyui_qrlora.qrlora_core.fingerprint import q_digest, sketch
from comfyui_qrlora.qrlora_core.formats import load_adapter, save_native
from comfyui_qrlora.qrlora_core.patch import add_delta, add_delta_, add_delta_stacked, delta, delta_output

SHAPES = {"x.a": (24, 16), "x.b": (20, 16)}


def bases(rng, rank=4) -> dict:
    return {n: torch.linalg.qr(torch.randn(*shape[:1], rank, generator=rng))[0] for n, shape in SHAPES.items()}


def files_in(folder) -> list:
    return sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))


def test_a_compact_file_saved_under_the_earlier_content_id_loads_and_its_basis_is_reused(tmp_path, rng):
    """Before basis ids were made in one function, Save wrote a compact adapter's Qs under 'r<rank>-q' + their digest."""
    qs = bases(rng)
    earlier_id = f"r4-q{q_digest(qs)[:16]}"  # what nodes/save.py computed itself
    store = BasisStore(str(tmp_path / "bases"))
    store.save(earlier_id, qs, {})
    targets = {n: QRTarget(q=q, delta_r=torch.triu(torch.randn(4, 16, generator=rng))) for n, q in qs.items()}
    adapter = QRLoRA(targets, rank=4, alpha=4.0, format="native")
    save_native(adapter, str(tmp_path / "earlier.safetensors"), basis_id=earlier_id)

    loaded = load_adapter(str(tmp_path / "earlier.safetensors"), basis_loader=store.load)
    assert loaded.format == "compact" and loaded.metadata["basis"] == earlier_id
    assert all(torch.equal(loaded.targets[n].q, qs[n]) for n in qs)
    assert store.keep(qs, 4, {}) == earlier_id == basis_id(4, qs=qs)
    assert files_in(tmp_path / "bases") == [earlier_id + ".safetensors"], "saving the same Qs again wrote a second basis"


def test_keep_reuses_the_trained_basis_only_when_it_holds_the_very_qs(tmp_path, rng):
    weights = {n: torch.randn(*shape, generator=rng) for n, shape in SHAPES.items()}
    store = BasisStore(str(tmp_path))
    trained, qs, sketches = store.get_or_build(weights, 4)
    assert trained == basis_id(4, sketches={n: sketch(w) for n, w in weights.items()})
    assert store.keep(qs, 4, sketches, known=trained) == trained
    flipped = {n: -q for n, q in qs.items()}  # the same subspaces, other Qs: a compact file must not take them
    other = store.keep(flipped, 4, sketches, known=trained)
    assert other == basis_id(4, qs=flipped) != trained
    assert torch.equal(store.load(other)["x.a"], flipped["x.a"]) and torch.equal(store.load(trained)["x.a"], qs["x.a"])
    with pytest.raises(TypeError):
        basis_id(4)


def test_a_basis_another_run_wrote_meanwhile_is_trained_on_and_left_in_place(tmp_path, rng):
    """Two trainings on one base and rank build the same basis id at once (two queued workflows, parallel bench
    workers): the second writer once replaced the first's file while a third process read it ("changed while it was
    being read"). Now the first file stays, and the late builder trains on its Qs, so every run holds the id's Qs."""
    weights = {n: torch.randn(*shape, generator=rng) for n, shape in SHAPES.items()}
    store = BasisStore(str(tmp_path))
    key = basis_id(4, sketches={n: sketch(w) for n, w in weights.items()})
    theirs = {n: -q for n, q in bases(rng).items()}  # what the other run computed (other signs: not bit-equal to ours)
    written = []

    def other_run_finishes(done):  # called by the decomposition while it runs
        if not written:
            written.append(BasisStore(str(tmp_path)).save(key, theirs, {}))

    got_id, qs, _ = store.get_or_build(weights, 4, progress=other_run_finishes)
    assert written == [True] and got_id == key
    stat = os.stat(store.path(key))
    assert all(torch.equal(qs[n], theirs[n]) for n in weights), "the late builder trained on Qs its id's file does not hold"
    assert store.get_or_build(weights, 4)[1].keys() == weights.keys()
    after = os.stat(store.path(key))
    assert (after.st_ino, after.st_ctime_ns) == (stat.st_ino, stat.st_ctime_ns), "the basis file was replaced"
    assert files_in(tmp_path) == [key + ".safetensors"], "a temporary file was left behind"


def test_a_damaged_file_under_a_content_id_is_replaced_by_the_next_compact_save(tmp_path, rng):
    qs = bases(rng)
    store = BasisStore(str(tmp_path))
    key = basis_id(4, qs=qs)
    with open(store.path(key), "wb") as f:
        f.write(b"not a safetensors file")
    assert store.keep(qs, 4, {}) == key
    assert all(torch.equal(store.load(key)[n], qs[n]) for n in qs)
    assert files_in(tmp_path) == [key + ".safetensors"]


def test_a_write_that_must_not_replace_leaves_the_earlier_file_and_no_temporary_one(tmp_path):
    from comfyui_qrlora.qrlora_core.formats import atomic_write

    target = tmp_path / "f.safetensors"
    assert atomic_write(b"first", str(target), replace=False) is True
    inode = os.stat(target).st_ino
    assert atomic_write(b"second", str(target), replace=False) is False
    assert target.read_bytes() == b"first" and os.stat(target).st_ino == inode
    assert atomic_write(b"third", str(target)) is True and target.read_bytes() == b"third"
    assert sorted(os.listdir(tmp_path)) == ["f.safetensors"]


def test_the_rank_check_names_the_tightest_layer_and_what_to_do():
    shapes = {"x.wide": (64, 128), "x.small": (6, 40), "x.smaller": (5, 40)}
    with pytest.raises(AdapterError, match=r"Rank 8 is larger than layer x.smaller allows \(\(5, 40\), at most rank 5\): lower the rank to 5"):
        check_rank(shapes, 8)
    with pytest.raises(AdapterError, match=r"^f.safetensors: rank 0 .* rank of 1 or more"):
        check_rank(shapes, 0, source="f.safetensors")
    check_rank(shapes, 5)
    with pytest.raises(AdapterError, match="at most rank 5"):
        decompose_many({n: torch.zeros(s) for n, s in shapes.items()}, 6)


@pytest.mark.parametrize("shape, targeted", [((8, 4), True), ((8, 4, 1, 1), True), ((8, 4, 3, 3), False), ((8,), False), ((8, 4, 1), False)])
def test_linear_layers_and_1x1_convolutions_are_what_qrlora_targets(shape, targeted):
    assert is_matrix_weight(shape) == targeted
    if not targeted and len(shape) > 1:
        with pytest.raises(AdapterError, match=r"linear layers and 1x1 convolutions, not weights of shape"):
            decompose_many({"x.conv": torch.randn(shape)}, 1)


def test_every_form_of_the_patch_is_w_plus_s_q_delta_r(rng):
    """patch.py against float64: in place, out of place, batched, the delta itself, a layer's output."""
    w = torch.randn(2, 12, 10, generator=rng, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(2, 12, 3, generator=rng, dtype=torch.float64))[0]
    d = torch.randn(2, 3, 10, generator=rng, dtype=torch.float64)
    x = torch.randn(5, 10, generator=rng, dtype=torch.float64)
    want = w + 0.7 * q @ d
    assert torch.allclose(delta(q[0], d[0], 0.7, torch.float64), want[0] - w[0])
    assert torch.allclose(add_delta(w[0], q[0].float(), d[0].float(), 0.7), want[0], atol=1e-5)
    assert torch.allclose(add_delta_(w[0].clone().reshape(12, 10, 1, 1), q[0], d[0], 0.7).reshape(12, 10), want[0])
    assert torch.allclose(add_delta_stacked(w, q, d, 0.7), want)
    assert torch.allclose(delta_output(x, q[1], d[1], 0.7), x @ (want[1] - w[1]).T)
