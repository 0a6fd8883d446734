"""Holes found by probing the pack from outside, as a hostile or careless user would (issue 11).

Each test drives the real server: files whose sizes lie (the server's RSS
is sampled during the request), files changed under the server, compact
adapters with a foreign basis, NaN typed into /prompt, adapters naming keys
this model lacks, layers ComfyUI stores in another layout, the summary
route under load, and file names in other letter cases.
"""

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import psutil
import pytest
import safetensors.torch
import torch

from integration.conftest import CLIP_L, SD3
from integration.test_inference import SD3_TARGETS, assert_only_targets_changed, rows
from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.basis import BasisStore
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.formats import save_native
from support.checks import assert_base_untouched, saved_model
from support import seeds
from devkit.graph import Graph

pytestmark = pytest.mark.server

RSS_GROWTH = 0.25  # of the server's own RSS before the request: a hostile 240 KB file may cost no more


@pytest.fixture
def seed(request):
    return seeds.seed_for(request.node.nodeid)


def loras(comfy, name):
    path = comfy.path("models", "loras", "probe", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def summary(comfy, name):
    url = f"{comfy.url}/api/qrlora/summary?lora_name={urllib.parse.quote(name)}"
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.status, json.loads(r.read()), time.perf_counter() - started
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), time.perf_counter() - started


def load_prompt(lora_name):
    """Load alone (Save makes it an output): nothing else runs, so memory is the loader's."""
    g = Graph()
    g.add("QRLoRASave", qr_lora=g.add("QRLoRALoader", lora_name=lora_name)[0], filename_prefix="probe/never", compact=False, dtype="fp32")
    return g.prompt()


def apply_prompt(lora_name, strength=1.0, prefix=None):
    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD3, weight_dtype="default")
    qr = g.add("QRLoRALoader", lora_name=lora_name)
    apply = g.add("QRLoRAApply", model=unet, qr_lora=qr[0], strength=strength)
    g.add("ModelSave", model=apply, filename_prefix=prefix or f"checks/{uuid.uuid4().hex[:8]}")
    return g.prompt(), apply.node_id


def sd3_adapter(base, generator, rank=4, layers=SD3_TARGETS, alpha=8.0) -> QRLoRA:
    targets = {}
    for name, (key, block) in layers.items():
        b = decompose(rows(base[key], block), rank)
        targets[name] = QRTarget(q=b.q, delta_r=torch.randn(rank, b.r.shape[1], generator=generator) * 0.05)
    return QRLoRA(targets, rank=rank, alpha=alpha, format="native", source="probe")


def expected_weights(base, adapter, strength=1.0, layers=SD3_TARGETS):
    out = {}
    for name, (key, block) in layers.items():
        w = out.setdefault(key, base[key].double().clone())
        t = adapter.targets[name]
        rows(w, block).add_(strength * adapter.scale * t.q.double() @ t.delta_r.double())
    return out


def rewrite_in_place(path, data: bytes):
    """Overwrite the same inode with bytes of the same length, and put the old mtime back (as `cp -p` or `touch -r` would)."""
    stat = os.stat(path)
    assert len(data) == stat.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    now = os.stat(path)
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class PeakRSS:
    """The server's resident memory before, and at its highest during, a block (sampled every millisecond)."""

    def __init__(self, pid):
        self.process = psutil.Process(pid)

    def __enter__(self):
        self.before = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ------------------------------------------------ sizes from a file are checked before memory is spent

BOMB_META = {"qrlora.format_version": "1", "qrlora.rank": "40000", "qrlora.alpha": "1.0"}
LAYER = "transformer.transformer_blocks.0.attn.to_q"


def _native_bomb(comfy):
    """Q says rank 40000, the packed ΔR holds 20000 values (a 240 KB file): the old reader allocated ~7 GB."""
    safetensors.torch.save_file({f"{LAYER}.qr.q": torch.zeros(1, 40000), f"{LAYER}.qr.delta_r_upper": torch.zeros(20000)},
                                loras(comfy, "bomb_native.safetensors"), metadata=BOMB_META)
    return "probe/bomb_native.safetensors", "does not fit rank 40000"


def _compact_bomb(comfy):
    """The same through a compact adapter's basis file."""
    BasisStore(comfy.path("models", "qrlora_bases")).save("r40000-probe", {LAYER: torch.zeros(1, 40000)}, {})
    meta = {**BOMB_META, "qrlora.basis_id": "r40000-probe", "qrlora.basis_q_digest": "0" * 64}
    safetensors.torch.save_file({f"{LAYER}.qr.delta_r_upper": torch.zeros(20000)}, loras(comfy, "bomb_compact.safetensors"), metadata=meta)
    return "probe/bomb_compact.safetensors", "is not a basis (m x r, r ≤ m)"


def _published_bomb(comfy):
    safetensors.torch.save_file({f"{LAYER}.lora.q.weight": torch.zeros(1, 40000), f"{LAYER}.lora.delta_r.weight": torch.zeros(40000, 1)},
                                loras(comfy, "bomb_published.safetensors"))
    return "probe/bomb_published.safetensors", "has rank 40000, more than its 1 x 1 layer allows"


def _header_bomb(comfy):
    """A header claiming a 40000 x 40000 Q over 16 bytes of data."""
    header = {f"{LAYER}.lora.q.weight": {"dtype": "F32", "shape": [40000, 40000], "data_offsets": [0, 8]},
              f"{LAYER}.lora.delta_r.weight": {"dtype": "F32", "shape": [40000, 40000], "data_offsets": [8, 16]}}
    text = json.dumps(header).encode()
    with open(loras(comfy, "bomb_header.safetensors"), "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + bytes(16))
    return "probe/bomb_header.safetensors", "not a readable safetensors file"


BOMBS = {"native": _native_bomb, "compact": _compact_bomb, "published": _published_bomb, "header": _header_bomb}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_sizes_that_lie_cost_no_memory_on_the_summary_route_or_in_load(comfy, client, kind):
    name, words = BOMBS[kind](comfy)
    with PeakRSS(comfy.process.pid) as route:
        status, body, _ = summary(comfy, name)
    assert status == 400 and words in body["error"] and os.path.basename(name) in body["error"], body
    with PeakRSS(comfy.process.pid) as load:
        error = client.run_expecting_error(load_prompt(name))
    assert words in error["exception_message"] and error["exception_type"].endswith("AdapterError"), error
    for what, rss in (("summary", route), ("load", load)):
        print(f"{kind} {what}: server RSS {rss.before / 2**20:.0f} MiB before, peak {rss.peak / 2**20:.0f} MiB")
        assert rss.peak - rss.before < RSS_GROWTH * rss.before, f"{what} grew the server by {(rss.peak - rss.before) / 2**20:.0f} MiB"
    assert comfy.alive()


# ------------------------------------------------ files changing under the server

def _big_native(path, generator, fill):
    """An 8 MB native adapter (one 4096 x 4096 layer at rank 256), so that reads and truncations overlap."""
    q = torch.linalg.qr(torch.randn(4096, 256, generator=generator))[0]
    adapter = QRLoRA({LAYER: QRTarget(q=q, delta_r=torch.full((256, 4096), fill))}, rank=256, alpha=256.0, format="native")
    save_native(adapter, path)
    with open(path, "rb") as f:
        return f.read()


def test_truncating_and_rewriting_a_file_while_the_summary_route_reads_it(comfy, seed):
    generator = torch.Generator().manual_seed(seed)
    path = loras(comfy, "changing.safetensors")
    versions = [_big_native(path, generator, 0.5), _big_native(path, generator, 0.25)]
    stop, statuses, problems, errors = threading.Event(), [], [], []

    def writer():
        i = 0
        while not stop.is_set():  # what `cp new old` or an in-place save does: truncate, then write
            with open(path, "r+b") as f:
                f.truncate(len(versions[0]) // (2 + i % 3))
                f.flush()
                time.sleep(0.002)
                f.seek(0)
                f.write(versions[i % 2])
            time.sleep(0.1)  # whole for a moment, as between two saves
            i += 1

    def reader():
        while not stop.is_set():
            status, body, _ = summary(comfy, "probe/changing.safetensors")
            statuses.append(status)
            if status == 400:
                errors.append(body.get("error"))
            if status not in (200, 400) or (status == 400 and "changing.safetensors" not in body.get("error", "")):
                problems.append((status, body))

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()
    assert comfy.alive(), f"the server died while the file changed:\n{comfy.log_tail()}"
    assert not problems, problems[:3]
    print(f"summary answers while the file changed: {statuses.count(200)} x 200, {statuses.count(400)} x 400, e.g. {errors[:1]}")
    assert statuses.count(200) > 0 and len(statuses) > 20
    status, body, _ = summary(comfy, "probe/changing.safetensors")  # settled again: read as it is now
    assert status == 200 and body["rank"] == 256


def test_an_adapter_rewritten_in_place_is_read_again_and_checked_again(comfy, client, base_models, seed):
    """Same inode, same size, same mtime: the next run applies the new content, and a NaN in it is refused."""
    generator = torch.Generator().manual_seed(seed)
    base = base_models["sd3"]
    path = loras(comfy, "inplace.safetensors")
    first = sd3_adapter(base, generator)
    save_native(first, path)
    prompt, _ = apply_prompt("probe/inplace.safetensors", prefix=(prefix := f"checks/{uuid.uuid4().hex[:8]}"))
    client.run(prompt)
    assert_only_targets_changed(base, saved_model(comfy, prefix), expected_weights(base, first))

    second = sd3_adapter(base, generator)
    scratch = loras(comfy, "scratch.safetensors")
    broken = sd3_adapter(base, generator)
    broken.targets[LAYER].delta_r[0, 0] = float("nan")
    save_native(broken, scratch)
    rewrite_in_place(path, open(scratch, "rb").read())
    prompt, _ = apply_prompt("probe/inplace.safetensors")
    assert "NaN or infinite" in client.run_expecting_error(prompt)["exception_message"]

    save_native(second, scratch)
    rewrite_in_place(path, open(scratch, "rb").read())
    prompt, _ = apply_prompt("probe/inplace.safetensors", prefix=(prefix := f"checks/{uuid.uuid4().hex[:8]}"))
    client.run(prompt)
    assert_only_targets_changed(base, saved_model(comfy, prefix), expected_weights(base, second))
    assert_base_untouched(comfy, client, SD3, base)


# ------------------------------------------------ a compact adapter applied with a basis it was not made on

@pytest.mark.parametrize("foreign", ["another base's basis", "Q scaled by 3"])
def test_a_compact_adapter_refuses_a_basis_it_was_not_made_on(comfy, client, base_models, seed, foreign):
    """The basis file is rewritten in place under the adapter's basis id between two runs."""
    generator = torch.Generator().manual_seed(seed)
    base = base_models["sd3"]
    adapter = sd3_adapter(base, generator)
    store = BasisStore(comfy.path("models", "qrlora_bases"))
    basis_id = f"r4-probe{uuid.uuid4().hex[:6]}"
    qs = {n: t.q for n, t in adapter.targets.items()}
    store.save(basis_id, qs, {})
    save_native(adapter, loras(comfy, f"{basis_id}.safetensors"), basis_id=basis_id)
    name = f"probe/{basis_id}.safetensors"
    prompt, _ = apply_prompt(name, prefix=(prefix := f"checks/{uuid.uuid4().hex[:8]}"))
    client.run(prompt)
    assert_only_targets_changed(base, saved_model(comfy, prefix), expected_weights(base, adapter))

    if foreign == "Q scaled by 3":
        other, words = {n: q * 3 for n, q in qs.items()}, "is not orthonormal"
    else:  # orthonormal, same shapes, another base model's weights
        other = {n: torch.linalg.qr(torch.randn(q.shape, generator=generator))[0] for n, q in qs.items()}
        words = f"was saved on another basis than the file {basis_id}.safetensors"
    scratch = BasisStore(comfy.path("models", "qrlora_bases", "scratch"))
    scratch.save(basis_id, other, {})
    rewrite_in_place(store.path(basis_id), open(scratch.path(basis_id), "rb").read())
    status, body, _ = summary(comfy, name)
    assert status == 400 and words in body["error"], body
    prompt, _ = apply_prompt(name)
    error = client.run_expecting_error(prompt)["exception_message"]
    assert words in error and basis_id in error, error
    assert_base_untouched(comfy, client, SD3, base)


# ------------------------------------------------ NaN typed through /prompt

def test_nan_in_a_float_input_is_refused_with_a_sentence(comfy, client, base_models, seed):
    generator = torch.Generator().manual_seed(seed)
    base = base_models["sd3"]
    for name in ("nan_a", "nan_b"):
        save_native(sd3_adapter(base, generator), loras(comfy, f"{name}.safetensors"))
    prompt, _ = apply_prompt("probe/nan_a.safetensors", strength=float("nan"))
    assert "The input strength is nan" in client.run_expecting_error(prompt)["exception_message"]

    g = Graph()
    a = g.add("QRLoRALoader", lora_name="probe/nan_a.safetensors")
    b = g.add("QRLoRALoader", lora_name="probe/nan_b.safetensors")
    merged = g.add("QRLoRAMerge", qr_lora_1=a[0], weight_1=1.0, qr_lora_2=b[0], weight_2=float("nan"))
    g.add("QRLoRASave", qr_lora=merged[0], filename_prefix="probe/nan_mix", compact=False, dtype="fp32")
    assert "The input weight_2 is nan" in client.run_expecting_error(g.prompt())["exception_message"]
    assert not [f for f in os.listdir(os.path.dirname(loras(comfy, "x"))) if f.startswith("nan_mix")], "a NaN mix was saved"
    assert_base_untouched(comfy, client, SD3, base)


# ------------------------------------------------ layer names this model does not have

MISSING = {  # names ComfyUI's SD3 key map knows but this SD3 lacks
    "transformer.transformer_blocks.1.ff_context.net.0.proj": "the last block has no context MLP",
    "transformer.transformer_blocks.0.attn2.to_q": "SD3.5's second attention",
}


def test_layers_the_key_map_names_but_the_model_lacks_are_skipped_and_reported(comfy, client, base_models, seed):
    generator = torch.Generator().manual_seed(seed)
    base = base_models["sd3"]
    valid = {LAYER: SD3_TARGETS[LAYER]}
    adapter = sd3_adapter(base, generator, layers=valid)
    for name in MISSING:
        adapter.targets[name] = QRTarget(q=adapter.targets[LAYER].q.clone(), delta_r=adapter.targets[LAYER].delta_r.clone())
    save_native(adapter, loras(comfy, "other_variant.safetensors"))
    prompt, apply_id = apply_prompt("probe/other_variant.safetensors", prefix=(prefix := f"checks/{uuid.uuid4().hex[:8]}"))
    text = client.ui(client.run(prompt), apply_id)["text"][0]
    assert f"Patched 1 of {1 + len(MISSING)}" in text and f"{len(MISSING)} layers are not in this model" in text, text
    assert_only_targets_changed(base, saved_model(comfy, prefix), expected_weights(base, adapter, layers=valid))

    only_missing = QRLoRA({n: adapter.targets[n] for n in MISSING}, rank=4, alpha=8.0, format="native")
    save_native(only_missing, loras(comfy, "only_missing.safetensors"))
    error = client.run_expecting_error(apply_prompt("probe/only_missing.safetensors")[0])
    assert "matches none of this model's layers" in error["exception_message"], error
    assert_base_untouched(comfy, client, SD3, base)


# ------------------------------------------------ layers ComfyUI stores in another layout

CONVERTED = {  # diffusers name -> ComfyUI key; ComfyUI keeps (scale, shift) where diffusers keeps (shift, scale)
    "transformer.norm_out.linear": "final_layer.adaLN_modulation.1.weight",
    "transformer.transformer_blocks.1.norm1_context.linear": "joint_blocks.1.context_block.adaLN_modulation.1.weight",
}


def swap_halves(w):
    half = w.shape[0] // 2
    return torch.cat([w[half:], w[:half]])


def test_layers_in_another_layout_are_applied_through_the_key_maps_function(comfy, client, base_models, text_and_vae, seed):
    generator = torch.Generator().manual_seed(seed)
    base = base_models["sd3"]
    targets = {}
    for name, key in CONVERTED.items():
        b = decompose(swap_halves(base[key]), 4)  # the adapter lives in the diffusers layout
        targets[name] = QRTarget(q=b.q, delta_r=torch.randn(4, b.r.shape[1], generator=generator) * 0.05)
    adapter = QRLoRA(targets, rank=4, alpha=8.0, format="native")
    save_native(adapter, loras(comfy, "layout.safetensors"))
    prompt, apply_id = apply_prompt("probe/layout.safetensors", strength=0.5, prefix=(prefix := f"checks/{uuid.uuid4().hex[:8]}"))
    text = client.ui(client.run(prompt), apply_id)["text"][0]
    assert f"Patched {len(CONVERTED)} of {len(CONVERTED)}" in text, text
    expected = {key: base[key].double() + swap_halves(0.5 * adapter.scale * targets[name].q.double() @ targets[name].delta_r.double())
                for name, key in CONVERTED.items()}
    assert_only_targets_changed(base, saved_model(comfy, prefix), expected)

    g = Graph()  # and the sampler runs with it (it failed in the patch before)
    unet = g.add("UNETLoader", unet_name=SD3, weight_dtype="default")
    model = g.add("QRLoRAApply", model=unet, qr_lora=g.add("QRLoRALoader", lora_name="probe/layout.safetensors")[0], strength=0.5)
    clip = g.add("CLIPLoader", clip_name=CLIP_L, type="sd3")
    positive = g.add("CLIPTextEncode", clip=clip, text="a photo")
    sampled = g.add("KSampler", model=model, seed=1, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple", positive=positive,
                    negative=positive, latent_image=g.add("EmptySD3LatentImage", width=64, height=64, batch_size=1), denoise=1.0)
    save = g.add("SaveLatent", samples=sampled, filename_prefix=f"probe/{uuid.uuid4().hex[:8]}")
    info = client.ui(client.run(g.prompt()), save.node_id)["latents"][0]
    latent = safetensors.torch.load_file(comfy.path("output", info["subfolder"], info["filename"]))["latent_tensor"]
    assert latent.shape == (1, 16, 8, 8) and torch.isfinite(latent).all()
    assert_base_untouched(comfy, client, SD3, base)


# ------------------------------------------------ the summary route under load

def _cpu_seconds(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def test_summary_route_reads_each_file_once_under_concurrent_alternating_requests(comfy, seed):
    """Measured as the server's CPU time, whatever way a file is read: eight requests at once
    for two new files cost about what two (one per file) cost, and 64 more next to nothing."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(4096, 1024, generator=generator))[0]
    for i in range(4):  # 32 MiB each: reading and checking one dominates a request's cost
        adapter = QRLoRA({LAYER: QRTarget(q=q, delta_r=torch.full((1024, 4096), 0.1 * (i + 1)))}, rank=1024, alpha=1024.0, format="native")
        save_native(adapter, loras(comfy, f"busy_{i}.safetensors"))
    names = [f"probe/busy_{i}.safetensors" for i in range(4)]
    size = os.path.getsize(loras(comfy, "busy_0.safetensors"))
    # Past a timestamp tick, the files' stat proves they did not change; past ComfyUI's
    # 10 s garbage-collection window after the last prompt, no gc.collect() lands in the bursts.
    time.sleep(10.5)
    server = psutil.Process(comfy.process.pid)

    def burst(files, at_once, rounds=1):
        latencies, lock = [], threading.Lock()

        def one(i):
            status, body, seconds = summary(comfy, files[i % len(files)])
            assert status == 200, body
            with lock:
                latencies.append(seconds)

        started = _cpu_seconds(server)
        for _ in range(rounds):
            threads = [threading.Thread(target=one, args=(i,)) for i in range(at_once)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return _cpu_seconds(server) - started, max(latencies)

    two, two_latency = burst(names[2:], 2)
    read_before = server.io_counters().read_chars
    cold, cold_latency = burst(names[:2], 8)
    read = server.io_counters().read_chars - read_before
    warm, warm_latency = burst(names[:2], 8, rounds=8)
    print(f"server CPU, two new 32 MiB files: one request each {two:.2f} s (slowest {two_latency:.2f} s wall); "
          f"four each at once {cold:.2f} s (slowest {cold_latency:.2f} s, {read / 2**20:.0f} MiB read); "
          f"64 more {warm:.2f} s (slowest {warm_latency:.3f} s)")
    assert cold < 2 * two, "concurrent requests for one file each read it"  # four reads each would cost about 4x
    assert read <= 2 * (2 * size) * 1.05, "a file was read more than twice (its hash, its tensors)"
    assert warm < 0.5 * two, "cached summaries were computed again"


def test_summary_errors_do_not_reveal_the_loras_folder(comfy):
    folder = os.path.realpath(comfy.path("models", "loras"))
    with open(loras(comfy, "damaged.safetensors"), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    for name in ("probe/nowhere.safetensors", "probe/damaged.safetensors", "probe"):
        status, body, _ = summary(comfy, name)
        assert status == 400 and folder not in body["error"] and comfy.base not in body["error"], body


# ------------------------------------------------ one rule for file names in the list and in /prompt

def test_other_letter_cases_are_listed_and_loadable_and_other_extensions_neither(comfy, client, base_models, seed):
    generator = torch.Generator().manual_seed(seed)
    save_native(sd3_adapter(base_models["sd3"], generator), loras(comfy, "Upper.SAFETENSORS"))
    with open(loras(comfy, "model.ckpt"), "wb") as f:
        f.write(b"not loaded")
    options = client.object_info("QRLoRALoader")["QRLoRALoader"]["input"]["required"]["lora_name"]
    listed = options[1]["options"] if len(options) > 1 and "options" in options[1] else options[0]
    assert "probe/Upper.SAFETENSORS" in listed and "probe/model.ckpt" not in listed
    prompt, apply_id = apply_prompt("probe/Upper.SAFETENSORS")
    assert f"Patched {len(SD3_TARGETS)} of {len(SD3_TARGETS)}" in client.ui(client.run(prompt), apply_id)["text"][0]
    status, body = client.post("/prompt", {"prompt": apply_prompt("probe/model.ckpt")[0]})
    assert status == 400 and "is not a .safetensors file" in json.dumps(body)


@pytest.mark.parametrize("prefix, words", [
    ("probe/nul\0name", "contains a NUL character"),
    ("probe/" + "x" * 300, "more than a file name may be (255)"),
    ("probe/a_file/adapter", "is a file, not a folder"),
    ("probe/x\ud800", "The input filename_prefix has a character that cannot be written into a file (U+D800"),
])
def test_an_unwritable_file_name_is_refused_with_a_sentence(comfy, client, base_models, seed, prefix, words):
    generator = torch.Generator().manual_seed(seed)
    save_native(sd3_adapter(base_models["sd3"], generator), loras(comfy, "to_save.safetensors"))
    with open(loras(comfy, "a_file"), "wb") as f:
        f.write(b"a file where a folder is asked for")
    before = sorted(os.listdir(os.path.dirname(loras(comfy, "x"))))
    g = Graph()
    g.add("QRLoRASave", qr_lora=g.add("QRLoRALoader", lora_name="probe/to_save.safetensors")[0], filename_prefix=prefix, compact=False, dtype="fp32")
    error = client.run_expecting_error(g.prompt())
    assert words in error["exception_message"] and error["exception_type"].endswith("AdapterError"), error
    assert sorted(os.listdir(os.path.dirname(loras(comfy, "x")))) == before
