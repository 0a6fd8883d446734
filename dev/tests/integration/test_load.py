"""Many prompts in a row: each output equals the same prompt run alone, no
patch leaks from one prompt into the next, and memory settles."""

import hashlib
import os
import uuid

import psutil
import pytest

from integration.conftest import SD3
from integration.test_inference import SD3_TARGETS, rows
from comfyui_qrlora.qrlora_core.decompose import decompose
from support.adapters import write_published
from support.checks import assert_base_untouched, saved_model
from support import seeds
from devkit.graph import Graph

pytestmark = pytest.mark.server

QUEUED = 30  # prompts per burst


@pytest.fixture(scope="module")
def adapters(comfy, base_models):
    g = seeds.generator("test_load:adapters")
    bases = {name: decompose(rows(base_models["sd3"][key], block), 4) for name, (key, block) in SD3_TARGETS.items()}
    os.makedirs(comfy.path("models", "loras", "load"), exist_ok=True)
    for name in ("a", "b"):
        write_published(comfy.path("models", "loras", "load", f"{name}.safetensors"), bases, g)
    return "load/a.safetensors", "load/b.safetensors"


def prompt_for(config, adapters, prefix):
    kind, strength = config
    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD3, weight_dtype="default")
    a = g.add("QRLoRALoader", lora_name=adapters[0])
    b = g.add("QRLoRALoader", lora_name=adapters[1])
    qr = {"a": a[0], "b": b[0]}.get(kind) or g.add("QRLoRAMerge", qr_lora_1=a[0], weight_1=0.6, qr_lora_2=b[0], weight_2=-0.4)[0]
    g.add("ModelSave", model=g.add("QRLoRAApply", model=unet, qr_lora=qr, strength=strength), filename_prefix=prefix)
    return g.prompt()


def digest(comfy, prefix) -> str:
    h = hashlib.sha256()
    for key, tensor in sorted(saved_model(comfy, prefix).items()):
        h.update(key.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def test_queued_prompts_equal_solo_runs_without_leaks(comfy, client, adapters, base_models):
    configs = [("a", 1.0), ("b", 0.5), ("mix", 1.0), ("a", 0.0), ("b", -2.0)]
    solo = {}
    for config in configs:
        prefix = f"load/{uuid.uuid4().hex[:8]}"
        client.run(prompt_for(config, adapters, prefix))
        solo[config] = digest(comfy, prefix)
    assert len(set(solo.values())) == len(configs)  # every config really differs
    server = psutil.Process(comfy.process.pid)
    rss = [server.memory_info().rss]
    for burst in range(2):  # the first fills allocator pools and caches: the baseline the second is measured from
        queued = []
        for i in range(QUEUED):
            config = configs[(i * 3) % len(configs)]
            prefix = f"load/{uuid.uuid4().hex[:8]}"
            queued.append((config, prefix, client.queue(prompt_for(config, adapters, prefix))))
        for config, prefix, prompt_id in queued:
            entry = client.wait(prompt_id, timeout=600)
            assert entry["status"]["status_str"] == "success", client.error(entry)
            assert digest(comfy, prefix) == solo[config], f"{config} gave another result when queued"
        rss.append(server.memory_info().rss)

    # A prompt that kept the weights it patched (a backup, a patched copy) would add them once per prompt.
    patched = sum(base_models["sd3"][key].numel() * base_models["sd3"][key].element_size() for key in {k for k, _ in SD3_TARGETS.values()})
    leak = QUEUED * patched / 2  # half a copy per prompt
    print(f"server RSS over two bursts of {QUEUED} queued prompts: {' -> '.join(f'{r / 2**20:.1f}' for r in rss)} MiB "
          f"(bound on the second: {leak / 2**20:.1f} MiB)")
    assert rss[2] - rss[1] < leak, f"server memory grew by {(rss[2] - rss[1]) / 2**20:.1f} MiB over {QUEUED} prompts after a warm-up"
    assert_base_untouched(comfy, client, SD3, base_models["sd3"])  # no patch leaked into the cached base
