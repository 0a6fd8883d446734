"""Outside probing, round 3 (issue 24): a file's identity, writes that escape, and names from files.

Through the real server, as a user or a hostile file would hit them: a file
rewritten between a prompt's start and its read, summaries under A -> B ->
A rewrites, byte copies and costly refusals, a folder swapped for a link
while saves run, prefixes too long or with spaces, and names of megabytes.
"""

import asyncio
import ctypes
import json
import os
import threading
import time
import uuid

import aiohttp
import psutil
import pytest
import safetensors
import safetensors.torch
import torch

from comfyui_qrlora.qrlora_core import QRTarget
from comfyui_qrlora.qrlora_core.formats import save_native
from devkit.graph import Graph
from integration.conftest import SD3
from integration.test_inference import SD3_TARGETS
from integration.test_probing import LAYER, loras, sd3_adapter, summary
from integration.test_train import base_files, train_prompt  # noqa: F401 (a fixture)
from support import seeds

pytestmark = pytest.mark.server

SLOW_ROWS = 4_000_000  # rows of the slow loader's Q: 64 MB to read and check, the time a file is rewritten in


@pytest.fixture
def generator(request):
    return torch.Generator().manual_seed(seeds.seed_for(request.node.nodeid))


def file_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def replace(path, data: bytes):
    """A new file under the old name, as a save or `cp` over it does."""
    with open(path + ".new", "wb") as f:
        f.write(data)
    os.replace(path + ".new", path)


def saved_trigger_words(comfy, entry, node_id) -> str:
    name = entry["outputs"][node_id]["files"][0]
    with safetensors.safe_open(comfy.path("models", "loras", name), "pt") as f:
        return f.metadata()["qrlora.trigger_words"]


class OnExecuting(threading.Thread):
    """Calls `action` once the server says node `node_id` of this client's prompt starts (ComfyUI's websocket)."""

    def __init__(self, comfy, client, node_id, action):
        super().__init__(daemon=True)
        self.url = comfy.url.replace("http", "ws", 1) + f"/ws?clientId={client.client_id}"
        self.node_id, self.action = node_id, action
        self.connected, self.done = threading.Event(), threading.Event()

    def run(self):
        asyncio.run(self._listen())

    async def _listen(self):
        async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
            self.connected.set()
            async for message in ws:
                data = json.loads(message.data) if message.type == aiohttp.WSMsgType.TEXT else {}
                if data.get("type") == "executing" and (data.get("data") or {}).get("node") == self.node_id:
                    self.action()
                    self.done.set()
                    return


# ------------------------------------------------ 1. what Load QR-LoRA runs is what it fingerprinted

def test_load_runs_the_bytes_it_fingerprinted_or_refuses(comfy, client, base_models, generator):
    """The file is rewritten after the prompt started, before the loader reads it; the old bytes come back later."""
    base = base_models["sd3"]
    path = loras(comfy, f"flip_{uuid.uuid4().hex[:6]}.safetensors")
    a, b = sd3_adapter(base, generator), sd3_adapter(base, generator)
    a.metadata["trigger_words"], b.metadata["trigger_words"] = "alpha", "bravo"
    save_native(b, path)
    b_bytes = file_bytes(path)
    save_native(a, path)
    a_bytes = file_bytes(path)

    # What the loader waits for: a loader whose 64 MB layer this SD3 lacks (skipped by Apply), read and checked first.
    q = torch.zeros(SLOW_ROWS, 4)
    q[torch.arange(4), torch.arange(4)] = 1.0  # orthonormal columns
    slow = sd3_adapter(base, generator, layers={LAYER: SD3_TARGETS[LAYER]})
    slow.targets["transformer.transformer_blocks.0.attn2.to_q"] = QRTarget(q=q, delta_r=torch.full((4, 4), 0.01))
    slow_name = f"slow_{uuid.uuid4().hex[:6]}.safetensors"
    save_native(slow, loras(comfy, slow_name))

    def prompt():
        g = Graph()
        unet = g.add("UNETLoader", unet_name=SD3, weight_dtype="default")
        slow_loader = g.add("QRLoRALoader", lora_name=f"probe/{slow_name}")
        applied = g.add("QRLoRAApply", model=unet, qr_lora=slow_loader[0], strength=1.0)
        loaded = g.add("QRLoRALoader", lora_name=f"probe/{os.path.basename(path)}", model=applied)
        save = g.add("QRLoRASave", qr_lora=loaded[0], filename_prefix=f"probe/flip/{uuid.uuid4().hex[:8]}", compact=False, dtype="fp32")
        return g.prompt(), slow_loader.node_id, save.node_id

    p, slow_id, save_id = prompt()
    listener = OnExecuting(comfy, client, slow_id, lambda: replace(path, b_bytes))
    listener.start()
    assert listener.connected.wait(30)
    entry = client.wait(client.queue(p))
    assert listener.done.is_set(), "the slow loader never ran"
    error = client.error(entry)
    assert error is not None and "changed after this prompt started" in error["exception_message"], (
        f"the loader ran other bytes than it fingerprinted: {entry['status']}")

    replace(path, a_bytes)  # the fingerprinted bytes are back: the run must apply them, not what was read in between
    p, _, save_id = prompt()
    assert saved_trigger_words(comfy, client.run(p), save_id) == "alpha"
    replace(path, b_bytes)
    p, _, save_id = prompt()
    assert saved_trigger_words(comfy, client.run(p), save_id) == "bravo"


# ------------------------------------------------ 1, 13, 14. the summary cache

def test_summaries_are_never_filed_under_bytes_they_were_not_made_from(comfy, generator, base_models):
    """A file flips between an adapter and nothing while the page asks about it; afterwards empty files are refused."""
    path = loras(comfy, "flicker.safetensors")
    save_native(sd3_adapter(base_models["sd3"], generator), path)
    adapter = file_bytes(path)
    empty_elsewhere = loras(comfy, "never_touched_empty.safetensors")
    open(empty_elsewhere, "wb").close()
    stop = threading.Event()
    pause = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))

    def writer():
        while not stop.is_set():
            with open(path, "wb") as f:
                f.write(adapter)
            time.sleep(float(torch.rand(1, generator=pause)) * 0.01)
            open(path, "wb").close()
            time.sleep(float(torch.rand(1, generator=pause)) * 0.01)

    def reader():
        while not stop.is_set():
            summary(comfy, "probe/flicker.safetensors")

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()
    open(path, "wb").close()
    for name in ("probe/flicker.safetensors", "probe/never_touched_empty.safetensors"):
        status, body, _ = summary(comfy, name)
        assert status == 400 and "only 0 bytes" in body["error"], (name, body)
    assert comfy.alive()


def test_a_byte_copy_is_summarised_under_its_own_name(comfy, generator, base_models):
    original, copy = loras(comfy, "copies/one/adapter.safetensors"), loras(comfy, "copies/two/adapter.safetensors")
    for path in (original, copy):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    save_native(sd3_adapter(base_models["sd3"], generator), original)
    replace(copy, file_bytes(original))
    for name in ("probe/copies/one/adapter.safetensors", "probe/copies/two/adapter.safetensors"):
        status, body, _ = summary(comfy, name)
        assert status == 200 and body["source"] == name, body


def test_a_costly_refusal_is_paid_once(comfy):
    """A 7 MB header of 120,000 empty tensors (no QR-LoRA layer): parsing it costs the server about a second."""
    header = {f"t{i:06}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(120_000)}
    text = json.dumps(header).encode()
    with open(loras(comfy, "huge_header.safetensors"), "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
    time.sleep(2.1)  # past a timestamp tick: the file's stat proves it unchanged from then on
    server = psutil.Process(comfy.process.pid)

    def cpu_seconds():
        times = server.cpu_times()
        return times.user + times.system

    started = cpu_seconds()
    status, body, _ = summary(comfy, "probe/huge_header.safetensors")
    first = cpu_seconds() - started
    assert status == 400 and "holds no QR-LoRA layers" in body["error"], body
    started = cpu_seconds()
    for _ in range(5):
        assert summary(comfy, "probe/huge_header.safetensors")[:2] == (status, body)
    again = cpu_seconds() - started
    print(f"server CPU for the refusal: first {first:.2f} s, five more {again:.2f} s")
    assert again < 0.5 * first, "the refusal was computed again"


# ------------------------------------------------ 3. a save lands inside the folder that was checked

def _exchange(a: str, b: str) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE), so that each always exists."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def test_a_folder_swapped_for_a_link_never_receives_a_save(comfy, client, base_models, generator):
    save_native(sd3_adapter(base_models["sd3"], generator), loras(comfy, "to_swap.safetensors"))
    outside = comfy.path("models", "not_loras", uuid.uuid4().hex[:8])  # outside loras, still inside models/
    os.makedirs(outside)
    tag = uuid.uuid4().hex[:6]
    folder, link = loras(comfy, f"swap_{tag}"), loras(comfy, f"swap_{tag}_link")
    os.makedirs(folder)
    os.symlink(outside, link)
    stop, swaps = threading.Event(), [0]

    def flipper():
        while not stop.is_set():
            _exchange(folder, link)
            swaps[0] += 1
            time.sleep(0.0005)

    thread = threading.Thread(target=flipper)
    thread.start()
    try:
        g = Graph()
        loaded = g.add("QRLoRALoader", lora_name="probe/to_swap.safetensors")
        outcomes = []
        for i in range(24):
            save = g.add("QRLoRASave", qr_lora=loaded[0], filename_prefix=f"probe/swap_{tag}/adapter_{i}", compact=False, dtype="fp32")
            entry = client.wait(client.queue(g.prompt()))
            error = client.error(entry)
            outcomes.append(error["exception_message"] if error else entry["outputs"][save.node_id]["files"][0])
            g.nodes.pop(save.node_id)
    finally:
        stop.set()
        thread.join()
    if os.path.islink(folder):
        _exchange(folder, link)
    kinds = ["saved" if o.startswith("probe/") else "refused at the write" if "a file or a link" in o else "refused at the check" for o in outcomes]
    print(f"{swaps[0]} swaps; {', '.join(f'{kinds.count(k)} {k}' for k in sorted(set(kinds)))}")
    assert os.listdir(outside) == [], f"files were written outside the loras folder: {os.listdir(outside)}"
    saved = [o for o in outcomes if o.startswith("probe/")]
    assert all(os.path.isfile(comfy.path("models", "loras", o)) for o in saved)
    assert all(o.startswith("probe/") or "a file or a link, not a folder" in o or "outside the loras folder" in o for o in outcomes), outcomes
    assert not [f for f in os.listdir(folder) if f.startswith(".partial")]


# ------------------------------------------------ 11, 12. prefixes: too long, and with spaces

TOO_LONG = "/".join(["d" * 200] * 21)  # each folder name fits (255), the path does not (4,096)


def _save_graph(node, prefix):
    g = Graph()
    loaded = g.add("QRLoRALoader", lora_name="probe/prefixes.safetensors")
    if node == "QRLoRASave":
        save = g.add(node, qr_lora=loaded[0], filename_prefix=prefix, compact=False, dtype="fp32")
    else:
        save = g.add(node, qr_lora=loaded[0], filename_prefix=prefix, dtype="fp32")
    return g.prompt(), save.node_id


@pytest.mark.parametrize("node", ["QRLoRASave", "QRLoRAExportLoRA", "QRLoRATrain"])
def test_a_path_longer_than_the_system_allows_is_refused_and_leaves_no_folders(comfy, client, base_models, base_files, generator, node):  # noqa: F811
    save_native(sd3_adapter(base_models["sd3"], generator), loras(comfy, "prefixes.safetensors"))
    top = f"long_{node}"
    prefix = f"probe/{top}/{TOO_LONG}/adapter"
    prompt = train_prompt(prefix) if node == "QRLoRATrain" else _save_graph(node, prefix)[0]
    error = client.run_expecting_error(prompt)
    assert "longer than the system allows" in error["exception_message"], error
    assert not os.path.exists(loras(comfy, top)), "folders were left behind"


@pytest.mark.parametrize("node", ["QRLoRASave", "QRLoRAExportLoRA"])
@pytest.mark.parametrize("prefix, written", [(" probe/spaced/lead", "probe/spaced/lead"), ("probe/ spaced /inner ", "probe/spaced/inner")])
def test_a_prefix_with_spaces_reports_the_name_it_wrote(comfy, client, base_models, generator, node, prefix, written):
    save_native(sd3_adapter(base_models["sd3"], generator), loras(comfy, "prefixes.safetensors"))
    prompt, save_id = _save_graph(node, prefix)
    ui = client.run(prompt)["outputs"][save_id]
    name = ui["files"][0]
    assert name.startswith(written + "_") and os.path.isfile(comfy.path("models", "loras", name)), (name, ui)
    assert name in ui["text"][0]


# ------------------------------------------------ 8. strings from files are quoted short

LONG = 8 * 2**20  # characters


def _long_layer_name(comfy):
    """A published file whose one Q is named with 8 MiB of text (and has no ΔR)."""
    name = "x" * LONG + ".lora.q.weight"
    safetensors.torch.save_file({name: torch.eye(4)}, loras(comfy, "long_name.safetensors"))
    return "probe/long_name.safetensors"


def _long_alpha(comfy):
    meta = {"qrlora.format_version": "1", "qrlora.rank": "4", "qrlora.alpha": "x" * LONG}
    safetensors.torch.save_file({f"{LAYER}.qr.q": torch.eye(4), f"{LAYER}.qr.delta_r": torch.ones(4, 4)}, loras(comfy, "long_alpha.safetensors"), metadata=meta)
    return "probe/long_alpha.safetensors"


def _long_basis_id(comfy):
    meta = {"qrlora.format_version": "1", "qrlora.rank": "4", "qrlora.basis_id": "r4-" + "b" * LONG, "qrlora.basis_q_digest": "0" * 64}
    safetensors.torch.save_file({f"{LAYER}.qr.delta_r": torch.ones(4, 4)}, loras(comfy, "long_basis.safetensors"), metadata=meta)
    return "probe/long_basis.safetensors"


@pytest.mark.parametrize("make", [_long_layer_name, _long_alpha, _long_basis_id], ids=["layer name", "alpha", "basis id"])
def test_megabytes_of_text_in_a_file_are_quoted_as_a_short_prefix(comfy, client, make):
    name = make(comfy)
    status, body, _ = summary(comfy, name)
    assert status == 400 and len(body["error"]) < 2000, (status, len(json.dumps(body)))
    log_before = comfy.log_size()
    g = Graph()
    g.add("QRLoRASave", qr_lora=g.add("QRLoRALoader", lora_name=name)[0], filename_prefix="probe/never", compact=False, dtype="fp32")
    prompt_id = client.queue(g.prompt())
    error = client.error(client.wait(prompt_id))
    assert error is not None and len(error["exception_message"]) < 2000, len(json.dumps(error))
    history = len(json.dumps(client.get(f"/history/{prompt_id}")))
    print(f"{name}: error {len(error['exception_message'])} characters, /history entry {history:,} bytes, log +{comfy.log_size() - log_before:,} bytes")
    assert history < 64_000 and comfy.log_size() - log_before < 64_000


def test_megabytes_of_trigger_words_are_shown_short_and_given_whole(comfy, client):
    meta = {"qrlora.format_version": "1", "qrlora.rank": "4", "qrlora.alpha": "4.0", "qrlora.trigger_words": "w" * LONG}
    safetensors.torch.save_file({f"{LAYER}.qr.q": torch.eye(4), f"{LAYER}.qr.delta_r": torch.ones(4, 4)}, loras(comfy, "long_words.safetensors"), metadata=meta)
    status, body, _ = summary(comfy, "probe/long_words.safetensors")
    assert status == 200 and len(json.dumps(body)) < 4000, len(json.dumps(body))
    g = Graph()
    loaded = g.add("QRLoRALoader", lora_name="probe/long_words.safetensors")
    save = g.add("QRLoRASave", qr_lora=loaded[0], filename_prefix="probe/long_words_saved", compact=False, dtype="fp32")
    prompt_id = client.queue(g.prompt())
    entry = client.wait(prompt_id)
    assert client.error(entry) is None, client.error(entry)
    assert len(json.dumps(client.get(f"/history/{prompt_id}"))) < 64_000
    assert saved_trigger_words(comfy, entry, save.node_id) == "w" * LONG  # the words themselves pass on whole
