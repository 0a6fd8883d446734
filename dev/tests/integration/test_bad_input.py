"""Bad adapter files through the real server: a clear error on the node, the
server keeps serving, and the base model's weights stay bit-identical."""

import json
import os
import pickle
import random
import struct
import uuid

import pytest
import safetensors.torch
import torch

from integration.conftest import SD3
from integration.test_inference import SD3_TARGETS, rows
from comfyui_qrlora.qrlora_core.decompose import decompose
from support.adapters import published_tensors
from support.checks import assert_base_untouched
from support import seeds
from devkit.graph import Graph

pytestmark = pytest.mark.server

MARKER = "/tmp/qrlora-pickle-was-executed"


class ExecutesOnUnpickle:
    """A pickle payload that would leave a marker file if anything unpickled it."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture(scope="module")
def valid_tensors(base_models):
    g = seeds.generator("test_bad_input:valid_tensors")
    bases = {name: decompose(rows(base_models["sd3"][key], block), 4) for name, (key, block) in SD3_TARGETS.items()}
    return published_tensors(bases, g)


def write_bytes(comfy, name, data: bytes) -> str:
    path = comfy.path("models", "loras", "bad", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return f"bad/{name}"


def write_tensors(comfy, name, tensors, metadata=None) -> str:
    path = comfy.path("models", "loras", "bad", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    return f"bad/{name}"


def lying_header(tensors) -> bytes:
    """A file whose header claims a larger shape than its data holds."""
    raw = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()})
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    key = next(k for k in header if k.endswith("q.weight"))
    header[key]["shape"][0] *= 2
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + size:]


def apply_prompt(lora_name, strength=1.0):
    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD3, weight_dtype="default")
    qr = g.add("QRLoRALoader", lora_name=lora_name)
    apply = g.add("QRLoRAApply", model=unet, qr_lora=qr[0], strength=strength)
    g.add("ModelSave", model=apply, filename_prefix=f"checks/{uuid.uuid4().hex[:8]}")
    return g.prompt(), apply.node_id


def with_change(tensors, key_end, change):
    out = {k: v.clone() for k, v in tensors.items()}
    key = next(k for k in out if k.endswith(key_end))
    out[key] = change(out[key])
    return out


def nan_at(t):
    t[0, 0] = float("nan")
    return t


def inf_at(t):
    t[-1, -1] = float("inf")
    return t


BAD_FILES = {
    "truncated": (lambda c, v: write_bytes(c, "truncated.safetensors", safetensors.torch.save(v)[:5000]), "not a readable safetensors file"),
    "pickle": (lambda c, v: write_bytes(c, "pickled.safetensors", pickle.dumps(ExecutesOnUnpickle())), "never pickles"),
    "torch_save": (lambda c, v: (torch.save(v, c.path("models", "loras", "bad", "torchsave.safetensors")), "bad/torchsave.safetensors")[1], "not a readable safetensors file"),
    "lying_header": (lambda c, v: write_bytes(c, "lying.safetensors", lying_header(v)), "not a readable safetensors file"),
    "random_bytes": (lambda c, v: write_bytes(c, "random.safetensors", random.Random(seeds.seed_for("test_bad_input:random_bytes")).randbytes(4096)), "not a readable safetensors file"),
    "nan_delta_r": (lambda c, v: write_tensors(c, "nan.safetensors", with_change(v, "delta_r.weight", nan_at)), "NaN or infinite"),
    "inf_q": (lambda c, v: write_tensors(c, "inf.safetensors", with_change(v, "q.weight", inf_at)), "NaN or infinite"),
    "other_base": (lambda c, v: write_tensors(c, "otherbase.safetensors", with_change(with_change(v, "to_q.lora.delta_r.weight", lambda t: t[:, :64].contiguous()), "to_q.lora.base_r.weight", lambda t: t[:, :64].contiguous())), "made for another base model"),
    "rank_zero": (lambda c, v: write_tensors(c, "rank0.safetensors", {k: (v[k][:, :0] if k.endswith("q.weight") else v[k][:0]) for k in v}), "rank 0"),
    "rank_too_large": (lambda c, v: write_tensors(c, "rankbig.safetensors", {
        "transformer.transformer_blocks.0.attn.to_q.lora.q.weight": torch.randn(128, 200),
        "transformer.transformer_blocks.0.attn.to_q.lora.delta_r.weight": torch.randn(200, 128)}), "more than its"),
    "future_version": (lambda c, v: write_tensors(c, "future.safetensors", {"transformer.transformer_blocks.0.attn.to_q.qr.q": torch.randn(128, 4), "transformer.transformer_blocks.0.attn.to_q.qr.delta_r": torch.randn(4, 128)},
                                                  {"qrlora.format_version": "99", "qrlora.rank": "4", "qrlora.alpha": "4.0"}), "update comfyui-qrlora"),
    "not_an_adapter": (lambda c, v: write_tensors(c, "plain.safetensors", {"some.weight": torch.randn(3, 3)}), "holds no QR-LoRA layers"),
    "ordinary_lora": (lambda c, v: write_tensors(c, "lora.safetensors", {"x.lora_up.weight": torch.randn(8, 2), "x.lora_down.weight": torch.randn(2, 8)}), "stock 'Load LoRA' node"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_gives_a_clear_error_and_harms_nothing(comfy, client, valid_tensors, base_models, case):
    make, message = BAD_FILES[case]
    os.makedirs(comfy.path("models", "loras", "bad"), exist_ok=True)
    name = make(comfy, valid_tensors)
    prompt, _ = apply_prompt(name)
    error = client.run_expecting_error(prompt)
    text = error["exception_message"]
    assert message in text, text
    assert os.path.basename(name) in text, f"the message does not name the file: {text}"
    assert "Traceback" not in text and len(text) < 600
    assert not os.path.exists(MARKER), "a pickle was executed"
    assert_base_untouched(comfy, client, SD3, base_models["sd3"])


def test_partial_adapter_applies_what_matches_and_says_how_many(comfy, client, valid_tensors, base_models):
    tensors = dict(valid_tensors)
    for part in ("q", "base_r", "delta_r"):
        tensors[f"transformer.transformer_blocks.7.attn.to_q.lora.{part}.weight"] = valid_tensors[f"transformer.transformer_blocks.0.attn.to_q.lora.{part}.weight"].clone()
    name = write_tensors(comfy, "partial.safetensors", tensors)
    prompt, apply_id = apply_prompt(name)
    entry = client.run(prompt)
    text = client.ui(entry, apply_id)["text"][0]
    assert f"Patched {len(SD3_TARGETS)} of {len(SD3_TARGETS) + 1}" in text
    assert "1 layers are not in this model" in text and "transformer_blocks.7" in text
    assert_base_untouched(comfy, client, SD3, base_models["sd3"])


@pytest.mark.parametrize("name", ["../escape.safetensors", "/etc/passwd", "bad/../../escape.safetensors"])
def test_names_that_leave_the_loras_folder_are_refused_before_running(comfy, client, name):
    prompt, _ = apply_prompt(name)
    status, body = client.post("/prompt", {"prompt": prompt})
    assert status == 400
    assert "is not a file name inside the loras folder" in json.dumps(body)


@pytest.mark.parametrize("name", [5, None, {"a": 1}], ids=["a number", "null", "an object"])
def test_a_name_that_is_not_text_is_refused_before_running(comfy, client, name):
    """A combo's value is not checked by ComfyUI when the node validates it itself: /prompt may send anything."""
    status, body = client.post("/prompt", {"prompt": apply_prompt(name)[0]})
    assert status == 400 and "is not a file name (it is not text): pick an adapter from the list" in json.dumps(body), body


def test_link_out_of_the_loras_folder_is_refused(comfy, client, valid_tensors, tmp_path):
    outside = tmp_path / "outside.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in valid_tensors.items()}, str(outside))
    link = comfy.path("models", "loras", "bad", "link.safetensors")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.islink(link):
        os.symlink(outside, link)
    status, body = client.post("/prompt", {"prompt": apply_prompt("bad/link.safetensors")[0]})
    assert status == 400
    assert "link to a file outside the loras folder" in json.dumps(body)


def test_merge_of_different_ranks_falls_back_and_reports_it(comfy, client, base_models, rng):
    g = rng
    for rank in (2, 4):
        bases = {name: decompose(rows(base_models["sd3"][key], block), rank) for name, (key, block) in SD3_TARGETS.items()}
        write_tensors(comfy, f"rank{rank}.safetensors", published_tensors(bases, g))
    graph = Graph()
    a = graph.add("QRLoRALoader", lora_name="bad/rank2.safetensors")
    b = graph.add("QRLoRALoader", lora_name="bad/rank4.safetensors")
    merge = graph.add("QRLoRAMerge", qr_lora_1=a[0], weight_1=0.0, qr_lora_2=b[0], weight_2=-1.5)
    unet = graph.add("UNETLoader", unet_name=SD3, weight_dtype="default")
    graph.add("ModelSave", model=graph.add("QRLoRAApply", model=unet, qr_lora=merge[0], strength=1.0), filename_prefix="checks/ranks")
    entry = client.run(graph.prompt())
    text = client.ui(entry, merge.node_id)["text"][0]
    assert f"{len(SD3_TARGETS)} layers have different bases" in text and "disentanglement does not hold" in text
