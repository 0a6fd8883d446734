"""The loader fed mutated and random bytes, in every format it reads: only
clean AdapterErrors (or a valid adapter), never another exception, a crash
or a hang. Hypothesis draws from QRLORA_TEST_SEED (printed) when set."""

import json
import os

import hypothesis.strategies as st
import safetensors.torch
import torch
import pytest
from hypothesis import HealthCheck, given, seed, settings

from comfyui_qrlora.qrlora_core import AdapterError, QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.basis import BasisStore
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.formats import load_adapter, save_native
from support.adapters import published_tensors
from support.seeds import seed_for

FUZZ = settings(max_examples=int(os.environ.get("QRLORA_FUZZ_EXAMPLES", 1000)), deadline=2000,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], derandomize=False)
SEED = seed_for("test_fuzz_loader")  # hypothesis draws from it (support/seeds.py: replayable)

_generator = torch.Generator().manual_seed(0)
_basis = decompose(torch.randn(12, 10, generator=_generator), 3)
VALID = safetensors.torch.save(published_tensors({"transformer.x.to_q": _basis}, _generator))
pytestmark = pytest.mark.timeout(180)  # a hang fails the test instead of stalling CI
NATIVE_HEADER = b'{"__metadata__":{"qrlora.format_version":"1","qrlora.rank":"3","qrlora.alpha":"3.0"},'


def _valid_files(folder) -> dict:
    """One small valid file per format: published, native (packed triangular ΔR), compact, and a compact file's basis."""
    target = QRTarget(q=_basis.q, delta_r=torch.triu(torch.randn(3, 10, generator=_generator)))
    adapter = QRLoRA({"transformer.x.to_q": target}, rank=3, alpha=3.0, format="native")
    BasisStore(str(folder)).save("basis", {"transformer.x.to_q": _basis.q}, {})
    save_native(adapter, str(folder / "native.safetensors"))
    save_native(adapter, str(folder / "compact.safetensors"), basis_id="basis")
    return {"published": VALID, **{k: (folder / f"{k}.safetensors").read_bytes() for k in ("native", "compact", "basis")}}


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    return _valid_files(tmp_path_factory.mktemp("valid"))


def load_bytes(tmp_path, data: bytes, kind: str = "published", valid: dict | None = None):
    """Load `data` as an adapter file, or (kind "basis") as the basis of a valid compact adapter."""
    path = tmp_path / "fuzz.safetensors"
    if kind == "basis":
        (tmp_path / "basis.safetensors").write_bytes(data)
        path.write_bytes(valid["compact"])
        loader = BasisStore(str(tmp_path)).load
    else:
        path.write_bytes(data)
        loader = BasisStore(str(tmp_path)).load if kind == "compact" else (lambda basis_id, source: {})
        if kind == "compact":
            (tmp_path / "basis.safetensors").write_bytes(valid["basis"])
    try:
        adapter = load_adapter(str(path), basis_loader=loader)
    except AdapterError as e:
        assert "fuzz.safetensors" in str(e)
        return None
    assert 0 < adapter.scale < float("inf"), f"loaded with scale {adapter.scale}: a file that changes nothing or turns its delta around"
    return adapter


@pytest.mark.parametrize("kind", ["published", "native", "compact", "basis"])
def test_valid_files_of_every_format_load(tmp_path, valid_files, kind):
    assert load_bytes(tmp_path, valid_files[kind], kind, valid_files) is not None


@pytest.mark.parametrize("kind", ["published", "native", "compact", "basis"])
def test_mutated_valid_files_fail_cleanly(tmp_path_factory, valid_files, kind):
    @seed(SEED)
    @FUZZ
    @given(st.data())
    def mutate(data):
        raw = bytearray(valid_files[kind])
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        load_bytes(tmp_path_factory.mktemp("fuzz"), bytes(raw), kind, valid_files)

    mutate()


@seed(SEED)
@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_fail_cleanly(tmp_path_factory, data):
    load_bytes(tmp_path_factory.mktemp("fuzz"), data)


@seed(SEED)
@FUZZ
@given(st.binary(max_size=512), st.binary(min_size=64, max_size=64))
def test_random_headers_after_a_plausible_start_fail_cleanly(tmp_path_factory, tail, data):
    header = NATIVE_HEADER + tail
    load_bytes(tmp_path_factory.mktemp("fuzz"), len(header).to_bytes(8, "little") + header + data)


@pytest.mark.parametrize("bad_id", [".asis", "a/b", "../basis", "x" * 300])
def test_a_compact_file_naming_an_impossible_basis_id_is_blamed_by_name(tmp_path, valid_files, bad_id):
    """A header's basis id that could leave the bases folder (CI's fuzz found '.asis'): the one sentence names the adapter file."""
    def edit(header):
        assert header["__metadata__"]["qrlora.basis_id"] == "basis"
        header["__metadata__"]["qrlora.basis_id"] = bad_id

    with pytest.raises(AdapterError, match="fuzz.safetensors.*not a valid basis id"):
        (tmp_path / "basis.safetensors").write_bytes(valid_files["basis"])
        (tmp_path / "fuzz.safetensors").write_bytes(_with_header(valid_files["compact"], edit))
        load_adapter(str(tmp_path / "fuzz.safetensors"), basis_loader=BasisStore(str(tmp_path)).load)


HOSTILE = ["", ".", "..", "../x", "a/b", "x" * 300, "nan", "inf", "-1", "0", "1e999", "3.5", "\u0000", "\u00e9", "[]", "{}", "true"]


def _with_header(raw: bytes, edit) -> bytes:
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    edit(header)
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + raw[8 + size :]


@pytest.mark.parametrize("kind", ["published", "native", "compact", "basis"])
def test_every_header_field_set_to_hostile_values_fails_cleanly(tmp_path_factory, valid_files, kind):
    """Each metadata value, and each tensor's dtype, shape and offsets, replaced in turn by strings and numbers a
    damaged or hand-made file could hold: the file loads, or its one sentence names it (the random mutations above
    reach a header's strings only by luck)."""
    raw = valid_files[kind]
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    edits = []
    for key in header.get("__metadata__", {}):
        edits += [(f"metadata {key}={value!r}", lambda h, k=key, v=value: h["__metadata__"].__setitem__(k, v)) for value in HOSTILE]
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        for field, values in {"dtype": ["F16", "BF16", "I64", "BOOL", "U8", "F64", "X9", 7],
                              "shape": [[], [0], [-1, 3], [end - begin], [2**40, 2**40], "3", [3.5, 2]],
                              "data_offsets": [[end, begin], [begin, end + 4], [0, 0], [begin, 2**62], [-4, end], "x"]}.items():
            edits += [(f"{name} {field}={value!r}", lambda h, n=name, f=field, v=value: h[n].__setitem__(f, v)) for value in values]
    assert edits
    for what, edit in edits:
        try:
            load_bytes(tmp_path_factory.mktemp("field"), _with_header(raw, edit), kind, valid_files)
        except AssertionError as e:
            raise AssertionError(f"{kind}, {what}: {e}") from None


@pytest.mark.parametrize("key, value, says", [("qrlora.alpha", "0", "positive"), ("qrlora.alpha", "-3", "positive"),
                                              ("qrlora.format_version", "0", "never existed"), ("qrlora.format_version", "-1", "never existed")])
def test_a_native_file_with_an_impossible_alpha_or_version_is_refused(tmp_path, valid_files, key, value, says):
    """Values a header can hold that no save ever wrote: read as they are, alpha 0 would patch nothing and a negative one the inverse."""
    raw = _with_header(valid_files["native"], lambda h: h["__metadata__"].__setitem__(key, value))
    with pytest.raises(AdapterError, match=f"fuzz.safetensors.*{says}"):
        (tmp_path / "fuzz.safetensors").write_bytes(raw)
        load_adapter(str(tmp_path / "fuzz.safetensors"), basis_loader=lambda basis_id, source: {})


@pytest.mark.parametrize("alpha", ["3.0", None])
@pytest.mark.parametrize("rank", ["1" + "0" * 400, "1000000000", "4"])
def test_a_native_rank_wider_than_every_layer_is_refused(tmp_path, valid_files, rank, alpha):
    """No save writes a rank its widest Q lacks (a mix keeps its first adapter's, whose layers hold it): past float's
    range it overflowed, below it loaded with s = alpha / rank near 0, an adapter that does nothing."""
    def edit(header):
        header["__metadata__"]["qrlora.rank"] = rank
        if alpha is None:
            del header["__metadata__"]["qrlora.alpha"]
    with pytest.raises(AdapterError, match="fuzz.safetensors: its rank .* the file is damaged") as e:
        (tmp_path / "fuzz.safetensors").write_bytes(_with_header(valid_files["native"], edit))
        load_adapter(str(tmp_path / "fuzz.safetensors"), basis_loader=lambda basis_id, source: {})
    assert len(str(e.value)) < 400
