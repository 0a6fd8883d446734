"""Files: the published layout, our native and compact formats, LoRA export."""

import json
import os

import pytest
import safetensors.torch
import torch

from devkit import host
from comfyui_qrlora.qrlora_core import AdapterError, QRTarget
from comfyui_qrlora.qrlora_core.basis import BasisStore
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.formats import export_lora, load_adapter, save_native
from support.adapters import write_published


@pytest.fixture
def bases(rng):
    shapes = {"transformer.a.to_q": (24, 16), "transformer.a.ff.net.0.proj": (40, 16), "transformer.a.ff.net.2": (16, 40)}
    return {name: decompose(torch.randn(*s, generator=rng), 8) for name, s in shapes.items()}


def test_published_file_loads_with_its_own_q_and_delta_r(tmp_path, bases, rng):
    tensors = write_published(tmp_path / "pub.safetensors", bases, rng)
    adapter = load_adapter(str(tmp_path / "pub.safetensors"))
    assert adapter.format == "published" and adapter.rank == 8 and adapter.scale == 1.0
    assert set(adapter.targets) == set(bases)
    for name, t in adapter.targets.items():
        assert torch.equal(t.q, tensors[f"{name}.lora.q.weight"])
        assert torch.equal(t.delta_r, tensors[f"{name}.lora.delta_r.weight"])


@pytest.mark.parametrize("triangular", [True, False])
def test_native_round_trip_is_exact(tmp_path, bases, rng, triangular):
    write_published(tmp_path / "pub.safetensors", bases, rng, triangular=triangular)
    adapter = load_adapter(str(tmp_path / "pub.safetensors"))
    adapter.metadata.update(trigger_words="<s> style", trained_on={"images": 3})
    save_native(adapter, str(tmp_path / "native.safetensors"))
    again = load_adapter(str(tmp_path / "native.safetensors"))
    assert again.format == "native" and again.rank == adapter.rank and again.alpha == adapter.alpha
    assert again.metadata["trigger_words"] == "<s> style"
    assert json.loads(again.metadata["trained_on"]) == {"images": 3}
    for name, t in adapter.targets.items():
        assert torch.equal(again.targets[name].q, t.q)
        assert torch.equal(again.targets[name].delta_r, t.delta_r)
    keys = safetensors.torch.load_file(str(tmp_path / "native.safetensors")).keys()
    assert any(k.endswith(".qr.delta_r_upper") for k in keys) == triangular


def test_compact_stores_delta_r_only_and_resolves_the_shared_basis(tmp_path, bases, rng):
    write_published(tmp_path / "pub.safetensors", bases, rng)
    adapter = load_adapter(str(tmp_path / "pub.safetensors"))
    store = BasisStore(str(tmp_path / "bases"))
    store.save("r8-test", {n: t.q for n, t in adapter.targets.items()}, {})
    save_native(adapter, str(tmp_path / "compact.safetensors"), basis_id="r8-test")
    keys = safetensors.torch.load_file(str(tmp_path / "compact.safetensors")).keys()
    assert not any(k.endswith(".qr.q") for k in keys)
    again = load_adapter(str(tmp_path / "compact.safetensors"), basis_loader=store.load)
    assert again.format == "compact"
    for name, t in adapter.targets.items():
        assert torch.equal(again.targets[name].q, t.q) and torch.equal(again.targets[name].delta_r, t.delta_r)
    save_native(adapter, str(tmp_path / "native.safetensors"))
    assert os.path.getsize(tmp_path / "compact.safetensors") < 0.5 * os.path.getsize(tmp_path / "native.safetensors")
    assert again.metadata["basis"] == "r8-test"
    save_native(again, str(tmp_path / "resaved.safetensors"))  # a full file again: needs no basis
    assert load_adapter(str(tmp_path / "resaved.safetensors")).format == "native"
    with pytest.raises(AdapterError, match="basis r8-test is not in"):
        load_adapter(str(tmp_path / "compact.safetensors"), basis_loader=BasisStore(str(tmp_path / "elsewhere")).load)


def test_exported_lora_holds_the_same_delta(tmp_path, bases, rng):
    write_published(tmp_path / "pub.safetensors", bases, rng)
    adapter = load_adapter(str(tmp_path / "pub.safetensors"))
    adapter.alpha = 16.0  # s = 2, so the scale must be folded into up
    export_lora(adapter, str(tmp_path / "lora.safetensors"))
    lora = safetensors.torch.load_file(str(tmp_path / "lora.safetensors"))
    for name, t in adapter.targets.items():
        up, down = lora[f"{name}.lora_B.weight"].double(), lora[f"{name}.lora_A.weight"].double()
        expected = 2.0 * t.q.double() @ t.delta_r.double()
        assert torch.allclose(up @ down, expected, atol=1e-6)
    with pytest.raises(AdapterError, match="ordinary LoRA"):
        load_adapter(str(tmp_path / "lora.safetensors"))


@pytest.mark.parametrize("write", [save_native, export_lora], ids=["save", "export"])
def test_values_beyond_the_chosen_precision_are_refused_and_leave_no_file(tmp_path, bases, rng, write):
    """ΔR weighted by 1e6 (Block Weights *=1e6) became infinity in fp16: Save wrote a file its own loader refuses,
    Export infinity in lora_A, which stock loaders apply."""
    write_published(tmp_path / "pub.safetensors", bases, rng)
    adapter = load_adapter(str(tmp_path / "pub.safetensors"))
    name = "transformer.a.ff.net.2"
    adapter.targets[name] = QRTarget(q=adapter.targets[name].q, delta_r=adapter.targets[name].delta_r * 1e6)
    with pytest.raises(AdapterError, match=rf"^out.safetensors: layer {name} .* fp16 .* save it in fp32 or bf16"):
        write(adapter, str(tmp_path / "sub" / "out.safetensors"), dtype=torch.float16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pub.safetensors"]
    write(adapter, str(tmp_path / "out.safetensors"), dtype=torch.bfloat16)
    assert all(torch.isfinite(t).all() for t in safetensors.torch.load_file(str(tmp_path / "out.safetensors")).values())


def test_an_interrupted_write_leaves_the_earlier_file_and_no_partial_one(tmp_path, bases, rng, monkeypatch):
    """Interrupted after the data is written, before the rename: the temporary file goes, the old file stays."""
    import comfyui_qrlora.qrlora_core.formats as formats

    write_published(tmp_path / "pub.safetensors", bases, rng)
    adapter = load_adapter(str(tmp_path / "pub.safetensors"))
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"previous content")
    written = []

    def interrupted_fsync(fd):
        written.append(os.fstat(fd).st_size)  # the temporary file holds the whole adapter by now
        raise KeyboardInterrupt

    monkeypatch.setattr(formats.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):  # not swallowed, not turned into a disk error
        save_native(adapter, str(target))
    assert written and written[0] > 1000
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".partial")] == []


def test_a_saved_adapter_gets_the_mode_an_ordinary_new_file_gets(tmp_path, bases, rng):
    """Not the private 0600 of the temporary file it was written through (a shared models folder must read it)."""
    write_published(tmp_path / "pub.safetensors", bases, rng)
    save_native(load_adapter(str(tmp_path / "pub.safetensors")), str(tmp_path / "out.safetensors"))
    (tmp_path / "plain").write_bytes(b"")
    assert (tmp_path / "out.safetensors").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_a_name_too_long_is_not_called_a_full_disk(tmp_path, bases, rng):
    write_published(tmp_path / "pub.safetensors", bases, rng)
    adapter = load_adapter(str(tmp_path / "pub.safetensors"))
    with pytest.raises(AdapterError, match="too long") as error:
        save_native(adapter, str(tmp_path / ("x" * 300 + ".safetensors")))
    assert "disk may be full" not in str(error.value)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(AdapterError, match="is a file or a link, not a folder"):
        save_native(adapter, str(tmp_path / "file" / "out.safetensors"))


def test_a_full_disk_is_a_clear_error_and_leaves_earlier_files_untouched(tmp_path, bases, rng):
    """A file-size limit (RLIMIT_FSIZE) makes every write past it fail as a full disk would."""
    import subprocess
    import sys
    import textwrap

    write_published(tmp_path / "pub.safetensors", bases, rng)
    (tmp_path / "out.safetensors").write_bytes(b"an earlier checkpoint")
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {host.DEV_ROOT!r})
        from devkit import host
        host.import_pack(entry_point=False)
        from comfyui_qrlora.qrlora_core.formats import load_adapter, save_native
        from comfyui_qrlora.qrlora_core import AdapterError, QRTarget
        adapter = load_adapter({str(tmp_path / "pub.safetensors")!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
        try:
            save_native(adapter, {str(tmp_path / "out.safetensors")!r})
        except AdapterError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "Could not write out.safetensors" in out.stdout and "disk may be full" in out.stdout, out.stdout + out.stderr
    assert (tmp_path / "out.safetensors").read_bytes() == b"an earlier checkpoint"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".partial")]
