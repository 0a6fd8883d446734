"""The loader fed mutated and random bytes: only clean AdapterErrors (or a
valid adapter), never another exception, a crash or a hang."""

import os

import hypothesis.strategies as st
import safetensors.torch
import torch
import pytest
from hypothesis import HealthCheck, given, settings

from qrlora_core import AdapterError
from qrlora_core.decompose import decompose
from qrlora_core.formats import load_adapter
from support.adapters import published_tensors

FUZZ = settings(max_examples=int(os.environ.get("QRLORA_FUZZ_EXAMPLES", 1000)), deadline=2000,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], derandomize=False)

_generator = torch.Generator().manual_seed(0)
VALID = safetensors.torch.save(published_tensors({"transformer.x.to_q": decompose(torch.randn(12, 10, generator=_generator), 3)}, _generator))
pytestmark = pytest.mark.timeout(180)  # a hang fails the test instead of stalling CI
NATIVE_HEADER = b'{"__metadata__":{"qrlora.format_version":"1","qrlora.rank":"3","qrlora.alpha":"3.0"},'


def load_bytes(tmp_path, data: bytes):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    try:
        return load_adapter(str(path), basis_loader=lambda basis_id, source: {})
    except AdapterError as e:
        assert "fuzz.safetensors" in str(e)
        return None


@FUZZ
@given(st.data())
def test_mutated_valid_files_fail_cleanly(tmp_path_factory, data):
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    load_bytes(tmp_path_factory.mktemp("fuzz"), bytes(raw))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_fail_cleanly(tmp_path_factory, data):
    load_bytes(tmp_path_factory.mktemp("fuzz"), data)


@FUZZ
@given(st.binary(max_size=512))
def test_random_headers_after_a_plausible_start_fail_cleanly(tmp_path_factory, tail):
    header = NATIVE_HEADER + tail
    load_bytes(tmp_path_factory.mktemp("fuzz"), len(header).to_bytes(8, "little") + header + os.urandom(64))
