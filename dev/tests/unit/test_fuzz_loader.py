"""The loader fed mutated and random bytes, in every format it reads: only
clean AdapterErrors (or a valid adapter), never another exception, a crash
or a hang. Hypothesis draws from QRLORA_TEST_SEED (printed) when set."""

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
        return load_adapter(str(path), basis_loader=loader)
    except AdapterError as e:
        assert "fuzz.safetensors" in str(e)
        return None


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
    raw = valid_files["compact"]
    size = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + size].replace(b'"qrlora.basis_id":"basis"', b'"qrlora.basis_id":' + f'"{bad_id}"'.encode())
    assert header != raw[8 : 8 + size]
    with pytest.raises(AdapterError, match="fuzz.safetensors.*not a valid basis id"):
        (tmp_path / "basis.safetensors").write_bytes(valid_files["basis"])
        (tmp_path / "fuzz.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + size :])
        load_adapter(str(tmp_path / "fuzz.safetensors"), basis_loader=BasisStore(str(tmp_path)).load)
