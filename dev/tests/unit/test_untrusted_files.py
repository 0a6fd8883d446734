"""Files that lie about their sizes, change after being read, or come with a foreign basis."""

import hashlib
import json
import math
import os
import struct

import pytest
import safetensors.torch
import torch

from comfyui_qrlora.qrlora_core import AdapterError, QRLoRA, QRTarget, merge
from comfyui_qrlora.qrlora_core.basis import BasisStore
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.errors import require_finite
from comfyui_qrlora.qrlora_core.formats import DOWN, UP, load_adapter, save_native
from comfyui_qrlora.qrlora_core.patch import delta
from comfyui_qrlora.qrlora_core.reference_formats import q_and_r_pairs
from comfyui_qrlora.qrlora_core.safefile import ContentIds
from comfyui_qrlora.qrlora_core.stock_keys import Refused, read_layer

NAME = "transformer.a.to_q"


def native(rng, shape=(24, 16), rank=4, triangular=True) -> QRLoRA:
    b = decompose(torch.randn(*shape, generator=rng), rank)
    delta_r = torch.randn(rank, shape[1], generator=rng)
    return QRLoRA({NAME: QRTarget(q=b.q, delta_r=torch.triu(delta_r) if triangular else delta_r)}, rank=rank, alpha=float(rank), format="native")


def raw_file(tensors: dict, metadata: dict | None = None) -> tuple[dict, bytes]:
    raw = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def assemble(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_a_packed_delta_r_claiming_a_huge_rank_is_refused_before_anything_is_allocated(tmp_path):
    """Q says rank 40000, the packed ΔR holds 20000 values: the old reader built a 40000 x 20000 matrix."""
    meta = {"qrlora.format_version": "1", "qrlora.rank": "40000", "qrlora.alpha": "1.0"}
    safetensors.torch.save_file({f"{NAME}.qr.q": torch.zeros(1, 40000), f"{NAME}.qr.delta_r_upper": torch.zeros(20000)},
                                str(tmp_path / "bomb.safetensors"), metadata=meta)
    with pytest.raises(AdapterError, match="does not fit rank 40000"):
        load_adapter(str(tmp_path / "bomb.safetensors"))


@pytest.mark.parametrize("rank, n", [(1, 1), (3, 3), (3, 10), (7, 9)])
def test_packed_delta_r_round_trips_for_every_trapezoid(tmp_path, rng, rank, n):
    adapter = native(rng, shape=(12, n), rank=rank)
    save_native(adapter, str(tmp_path / "a.safetensors"))
    keys = safetensors.torch.load_file(str(tmp_path / "a.safetensors")).keys()
    assert f"{NAME}.qr.delta_r_upper" in keys
    assert torch.equal(load_adapter(str(tmp_path / "a.safetensors")).targets[NAME].delta_r, adapter.targets[NAME].delta_r)


LIES = {
    "shape larger than its bytes": lambda h, d: (h.__getitem__(f"{NAME}.qr.q")["shape"].__setitem__(0, 10**9), d),
    "offsets past the end": lambda h, d: (h.__getitem__(f"{NAME}.qr.q")["data_offsets"].__setitem__(1, 10**12), d),
    "data missing at the end": lambda h, d: (None, d[:-4]),
    "extra data at the end": lambda h, d: (None, d + b"\0" * 8),
    "negative size": lambda h, d: (h.__getitem__(f"{NAME}.qr.q")["shape"].__setitem__(0, -24), d),
    "unknown dtype": lambda h, d: (h.__getitem__(f"{NAME}.qr.q").__setitem__("dtype", "F128"), d),
    "float in shape": lambda h, d: (h.__getitem__(f"{NAME}.qr.q")["shape"].__setitem__(0, 24.0), d),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_header_that_lies_about_sizes_is_refused(tmp_path, rng, lie):
    save_native(native(rng), str(tmp_path / "good.safetensors"))
    header, data = raw_file(safetensors.torch.load_file(str(tmp_path / "good.safetensors")),
                            {"qrlora.format_version": "1", "qrlora.rank": "4", "qrlora.alpha": "4.0"})
    _, data = LIES[lie](header, data)
    (tmp_path / "lie.safetensors").write_bytes(assemble(header, data))
    with pytest.raises(AdapterError, match="lie.safetensors is not a readable safetensors file"):
        load_adapter(str(tmp_path / "lie.safetensors"))


def test_a_header_length_beyond_the_file_is_refused(tmp_path):
    (tmp_path / "long.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(AdapterError, match="claims 1,099,511,627,776 bytes of a 10-byte file"):
        load_adapter(str(tmp_path / "long.safetensors"))


@pytest.mark.parametrize("change", ["rewrite", "truncate"])
def test_what_was_read_does_not_depend_on_the_file_staying_as_it_was(tmp_path, rng, change):
    path = tmp_path / "a.safetensors"
    save_native(native(rng), str(path))
    adapter = load_adapter(str(path))
    held = {n: (t.q.clone(), t.delta_r.clone()) for n, t in adapter.targets.items()}
    if change == "rewrite":  # in place: same inode, same size, other values
        other = native(rng)
        save_native(other, str(tmp_path / "b.safetensors"))
        with open(path, "r+b") as f:
            f.write((tmp_path / "b.safetensors").read_bytes())
    else:
        os.truncate(path, 100)
    for name, t in adapter.targets.items():  # a memory-mapped tensor would now read other bytes, or SIGBUS
        assert torch.equal(t.q, held[name][0]) and torch.equal(t.delta_r, held[name][1])
        assert float(delta(t.q, t.delta_r, 1.0).sum()) == float(delta(t.q, t.delta_r, 1.0).sum())


def test_content_id_tells_a_rewrite_with_the_same_size_and_mtime(tmp_path):
    ids = ContentIds()
    path = tmp_path / "a.bin"
    path.write_bytes(b"a" * 1000)
    first = ids.read(str(path), "a.bin").digest
    stat = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"b" * 1000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size and os.stat(path).st_mtime_ns == stat.st_mtime_ns
    assert ids.known(str(path)) is None  # the rewrite moved ctime: the remembered hash no longer holds
    second = ids.read(str(path), "a.bin").digest
    assert first != second and second == hashlib.sha256(b"b" * 1000).hexdigest()


@pytest.fixture
def compact_setup(tmp_path, rng):
    """A compact adapter saved on basis r4-test, and its store."""
    adapter = native(rng)
    store = BasisStore(str(tmp_path / "bases"))
    store.save("r4-test", {n: t.q for n, t in adapter.targets.items()}, {})
    save_native(adapter, str(tmp_path / "compact.safetensors"), basis_id="r4-test")
    return adapter, store, str(tmp_path / "compact.safetensors")


def test_compact_adapter_loads_with_the_basis_it_was_saved_on(compact_setup):
    adapter, store, path = compact_setup
    again = load_adapter(path, basis_loader=store.load)
    assert torch.equal(again.targets[NAME].q, adapter.targets[NAME].q)


def test_compact_adapter_refuses_another_bases_q_under_its_basis_id(compact_setup, rng):
    """Another base's (orthonormal) basis, or the same base decomposed elsewhere, saved under the right id."""
    _, store, path = compact_setup
    other = decompose(torch.randn(24, 16, generator=rng), 4).q
    store.save("r4-test", {NAME: other}, {})
    with pytest.raises(AdapterError, match="compact.safetensors was saved on another basis than the file r4-test.safetensors"):
        load_adapter(path, basis_loader=store.load)


def test_compact_adapter_refuses_a_q_scaled_by_three(compact_setup):
    adapter, store, path = compact_setup
    store.save("r4-test", {NAME: adapter.targets[NAME].q * 3}, {})
    with pytest.raises(AdapterError, match=r"r4-test.safetensors \(the basis of compact.safetensors\): transformer.a.to_q.q is not orthonormal"):
        load_adapter(path, basis_loader=store.load)


def test_compact_adapter_without_a_basis_fingerprint_is_refused(compact_setup, tmp_path):
    _, store, path = compact_setup
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "qrlora.basis_q_digest"}
    safetensors.torch.save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    with pytest.raises(AdapterError, match="without the fingerprint of its basis"):
        load_adapter(str(tmp_path / "old.safetensors"), basis_loader=store.load)


def test_a_native_q_that_is_not_orthonormal_is_refused(tmp_path, rng):
    adapter = native(rng)
    adapter.targets[NAME].q = adapter.targets[NAME].q * 3
    save_native(adapter, str(tmp_path / "scaled.safetensors"))
    with pytest.raises(AdapterError, match="scaled.safetensors: Q of layer transformer.a.to_q is not orthonormal"):
        load_adapter(str(tmp_path / "scaled.safetensors"))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_require_finite_names_the_input(value):
    with pytest.raises(AdapterError, match=f"The input weight_2 is {value}"):
        require_finite(weight_1=1.0, weight_2=value, weight_3=None)
    require_finite(strength=-4.0, weight_1=None)


def test_integer_q_or_delta_r_is_refused(tmp_path):
    meta = {"qrlora.format_version": "1", "qrlora.rank": "2", "qrlora.alpha": "2.0"}
    safetensors.torch.save_file({f"{NAME}.qr.q": torch.eye(4, 2, dtype=torch.int32), f"{NAME}.qr.delta_r": torch.ones(2, 4)},
                                str(tmp_path / "int.safetensors"), metadata=meta)
    with pytest.raises(AdapterError, match="int.safetensors: layer transformer.a.to_q stores Q as torch.int32"):
        load_adapter(str(tmp_path / "int.safetensors"))


def test_a_mix_of_adapters_of_other_ranks_saves_and_loads(tmp_path, rng):
    """A mix keeps its first adapter's rank; a layer only the others have is narrower than that, and loads."""
    wide = native(rng, rank=4)
    narrow = native(rng, rank=2)
    narrow.targets["transformer.b.to_k"] = native(rng, rank=2).targets[NAME]
    mixed, _ = merge([wide, narrow], [1.0, 1.0])
    save_native(mixed, str(tmp_path / "mix.safetensors"))
    loaded = load_adapter(str(tmp_path / "mix.safetensors"))
    assert loaded.rank == 4 and loaded.targets["transformer.b.to_k"].rank == 2


def fp8_basis(m=64, r=4):
    q, _ = torch.linalg.qr(torch.randn(m, r, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    return q.contiguous()


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("factor", [1.0, 0.0, 1.8])
def test_an_fp8_q_is_held_to_the_same_basis_as_any_other(tmp_path, dtype, factor):
    """fp8's eps (0.125, 0.25) once set the tolerance: a zeroed or scaled Q passed and the delta came out x0 or x1.8."""
    q = fp8_basis()
    tensors = {NAME + ".lora.q.weight": (q * factor).to(dtype), NAME + ".lora.delta_r.weight": torch.randn(4, 32)}
    safetensors.torch.save_file(tensors, str(tmp_path / "fp8.safetensors"))
    if factor == 1.0:
        assert load_adapter(str(tmp_path / "fp8.safetensors")).targets[NAME].rank == 4
        assert read_layer(NAME, tensors).scale == 1.0
        return
    with pytest.raises(AdapterError, match="fp8.safetensors: Q of layer transformer.a.to_q is not orthonormal"):
        load_adapter(str(tmp_path / "fp8.safetensors"))
    with pytest.raises(Refused, match="not of unit length"):
        read_layer(NAME, tensors)


def test_the_stock_path_refuses_an_fp8_q_15_percent_too_long():
    """Column lengths 15% off passed e5m2's eps (0.25); genuine fp8 bases of real layers are off by at most 0.05."""
    tensors = {NAME + ".lora.q.weight": (fp8_basis() * 1.15).to(torch.float8_e5m2), NAME + ".lora.delta_r.weight": torch.randn(4, 32)}
    with pytest.raises(Refused, match="not of unit length"):
        read_layer(NAME, tensors)


@pytest.mark.parametrize("alpha", [0.0, -2.0, math.nan, math.inf])
def test_a_stock_alpha_that_is_not_positive_and_finite_is_refused(alpha):
    """alpha 0 would patch nothing and a negative one the inverse, as the native scale is refused for."""
    tensors = {NAME + ".lora.q.weight": fp8_basis().float(), NAME + ".lora.delta_r.weight": torch.randn(4, 32)}
    with pytest.raises(Refused, match="alpha"):
        read_layer(NAME, tensors, alpha=alpha)
    assert read_layer(NAME, tensors, alpha=8.0).scale == 2.0


def test_a_q_and_r_checkpoint_in_fp8_is_read_and_its_nan_refused():
    """float8 has no isfinite on the CPU: the check itself raised NotImplementedError."""
    stem = "transformer.a.to_out.0.to_out.0"
    q, r = fp8_basis(), torch.randn(4, 32)
    pairs = q_and_r_pairs({stem + UP: q.to(torch.float8_e4m3fn), stem + DOWN: r.to(torch.float8_e4m3fn)}, "qr.safetensors")
    assert pairs["transformer.a.to_out.0"][0].dtype == torch.float32
    r[0, 0] = math.nan
    with pytest.raises(AdapterError, match="qr.safetensors: layer .* contains NaN"):
        q_and_r_pairs({stem + UP: q.to(torch.float8_e4m3fn), stem + DOWN: r.to(torch.float8_e4m3fn)}, "qr.safetensors")


def test_a_q_and_r_checkpoint_whose_delta_leaves_float32_is_refused():
    """Finite Q_t and R_t of 1e20 each loaded, and Apply patched the weight to infinity."""
    stem = "transformer.a.to_q"
    q, r = torch.randn(16, 4), torch.randn(4, 32)
    assert q_and_r_pairs({stem + UP: q, stem + DOWN: r}, "qr.safetensors")
    with pytest.raises(AdapterError, match=rf"^qr.safetensors: layer {stem}: its delta Q·R reaches .* use another file"):
        q_and_r_pairs({stem + UP: q * 1e20, stem + DOWN: r * 1e20}, "qr.safetensors")


def test_a_shape_of_a_million_dimensions_is_clipped_in_the_message(tmp_path):
    """A header may give a tensor a million dimensions: repeated whole, they made a 3 MB sentence."""
    header = {NAME + ".qr.q": {"dtype": "F32", "shape": [0] * 1_000_000, "data_offsets": [0, 0]},
              NAME + ".qr.delta_r": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]},
              "__metadata__": {"qrlora.format_version": "1", "qrlora.rank": "1", "qrlora.alpha": "1.0"}}
    (tmp_path / "dims.safetensors").write_bytes(assemble(header, b"\0" * 4))
    with pytest.raises(AdapterError, match="dims.safetensors: layer transformer.a.to_q has Q of shape") as e:
        load_adapter(str(tmp_path / "dims.safetensors"))
    assert len(str(e.value)) < 600
    with pytest.raises(Refused, match="do not fit together") as e:
        read_layer(NAME, {NAME + ".lora.q.weight": torch.zeros([0] * 1_000_000), NAME + ".lora.delta_r.weight": torch.zeros(1, 1)})
    assert len(str(e.value)) < 600


def test_a_compact_file_whose_layers_its_basis_lacks_is_refused_even_with_a_q_of_its_own(tmp_path, rng):
    """A compact save keeps no Q: a file giving one layer its own Q once skipped the basis digest for every layer,
    so another layer took a changed basis's Q silently."""
    adapter = native(rng)
    adapter.targets["transformer.b.to_k"] = native(rng).targets[NAME]
    store = BasisStore(str(tmp_path))
    store.save("r4-test", {n: t.q for n, t in adapter.targets.items()}, {})
    save_native(adapter, str(tmp_path / "compact.safetensors"), basis_id="r4-test")
    assert load_adapter(str(tmp_path / "compact.safetensors"), basis_loader=store.load).targets.keys() == adapter.targets.keys()
    store.save("r4-test", {NAME: -adapter.targets[NAME].q}, {})  # another basis, without layer b
    tensors = safetensors.torch.load_file(str(tmp_path / "compact.safetensors"))
    with safetensors.safe_open(str(tmp_path / "compact.safetensors"), "pt") as f:
        metadata = f.metadata()
    tensors["transformer.b.to_k.qr.q"] = adapter.targets["transformer.b.to_k"].q
    safetensors.torch.save_file(tensors, str(tmp_path / "crafted.safetensors"), metadata=metadata)
    with pytest.raises(AdapterError, match="crafted.safetensors is a compact adapter whose basis r4-test lacks 1 of its 2 layers"):
        load_adapter(str(tmp_path / "crafted.safetensors"), basis_loader=store.load)
