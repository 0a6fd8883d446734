"""Sample images during training, and resuming a run exactly, through the real server.

All runs train on the folder of mixed-size captioned images
(test_train_folder.py) with a small SD1.5 UNet, TAESD and CLIP-L of random
weights, on the CPU in fp32:
- A: 2N steps in one run, sampling two prompts every N steps;
- B: N steps, then C: Load QR-LoRA of B's final file -> N more steps.
C's ΔR must equal A's bit for bit (and A sampled while B and C did not, so
sampling does not change what is trained either). D continues from a plain
copy of B's adapter (no training state) and says it restarts the optimizer.
"""

import os

import pytest
import torch
from PIL import Image

from comfyui_qrlora.qrlora_core.formats import load_adapter, read_safetensors
from devkit import folder_dataset
from devkit.graph import Graph

pytestmark = pytest.mark.server

N = 2
UNET = "tiny_sd15.safetensors"
FOLDER = "qrresume_folder"
PROMPTS = ["a photo of a <c> dog", "a <c> dog in the snow"]


def graph(text_and_vae, steps, prefix, samples=False, continue_from=None, seed=5):
    clip_name, vae_name = text_and_vae
    g = Graph()
    load = g.add("LoadImageTextDataSetFromFolder", folder=FOLDER)
    vae = g.add("VAELoader", vae_name=vae_name)
    clip = g.add("CLIPLoader", clip_name=clip_name, type="stable_diffusion")
    data = g.add("QRLoRATrainingData", images=load[0], captions=load[1], vae=vae, clip=clip, resolution=128,
                 default_caption="a photo of a <c> dog")
    unet = g.add("UNETLoader", unet_name=UNET, weight_dtype="default")
    extra = {}
    if samples:
        extra["samples"] = g.add("QRLoRASampleSettings", clip=clip, vae=vae, prompts="\n".join(PROMPTS), negative="", every=N,
                                 width=64, height=64, steps=2, cfg=2.0, sampler_name="euler", scheduler="normal", seed=3)
    if continue_from:
        extra["qr_lora"] = g.add("QRLoRALoader", lora_name=continue_from)
    train = g.add(
        "QRLoRATrain", model=unet, latents=data[0], positive=data[1], rank=4, alpha=0.0, steps=steps, learning_rate=1e-2,
        batch_size=2, grad_accumulation=2, seed=seed, optimizer="AdamW", training_dtype="fp32", gradient_checkpointing=False,
        target_preset="attention + MLP (paper)", target_pattern="", triangular=True, checkpoint_every=0,
        filename_prefix=prefix, trigger_words="<c>", **extra,
    )
    return g, train


@pytest.fixture(scope="module")
def runs(comfy, base_models, text_and_vae):
    from devkit.server import Client

    client = Client(comfy.url)
    folder_dataset.write(comfy.path("input"), FOLDER)
    out = {"client": client}
    for key, steps, prefix, samples, start in (("a", 2 * N, "qrresume/a", True, None), ("b", N, "qrresume/b", False, None)):
        g, train = graph(text_and_vae, steps, prefix, samples=samples)
        out[key] = client.ui(client.run(g.prompt(), timeout=600), train.node_id)
    g, train = graph(text_and_vae, N, "qrresume/c", continue_from=out["b"]["qrlora"][0]["file"], seed=999)
    out["c"] = client.ui(client.run(g.prompt(), timeout=600), train.node_id)
    return out


def adapter_file(comfy, ui):
    return comfy.path("models", "loras", ui["qrlora"][0]["file"])


def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run_bit_for_bit(comfy, runs):
    a, c = (load_adapter(adapter_file(comfy, runs[k])) for k in ("a", "c"))
    assert runs["c"]["qrlora"][0]["steps"] == 2 * N and int(c.metadata["steps"]) == 2 * N
    assert a.targets.keys() == c.targets.keys()
    different = [n for n in a.targets if not a.targets[n].delta_r.equal(c.targets[n].delta_r)]
    assert not different, f"{len(different)} layers differ, e.g. {different[0]}"
    assert any(t.delta_r.abs().sum() > 0 for t in a.targets.values())
    assert runs["a"]["loss"][N:] == runs["c"]["loss"], "the continued run sees the same batches, noise and timesteps"
    note = runs["c"]["text"][0]
    assert f"Resumed exactly from step {N} of {runs['b']['qrlora'][0]['file']}" in note and "seed input is not used" in note


def test_checkpoints_keep_the_training_state_as_tensors(comfy, runs):
    tensors, metadata = read_safetensors(adapter_file(comfy, runs["b"]))
    state = {k: v for k, v in tensors.items() if k.startswith("train_state.")}
    layers = len(load_adapter(adapter_file(comfy, runs["b"])).targets)
    assert len([k for k in state if k.endswith((".exp_avg", ".exp_avg_sq", ".step"))]) == 3 * layers
    assert "train_state.rng.draws" in state
    assert '"step": %d' % N in metadata["train_state"] and '"optimizer": "AdamW"' in metadata["train_state"]


def test_stock_lora_loader_reads_a_checkpoint_as_the_adapter_it_holds(comfy, runs):
    """Its training state is no weight: the stock loader applies the adapter and does not list the state as keys it left."""
    client, name = runs["client"], runs["b"]["qrlora"][0]["file"]
    offset = comfy.log_size()
    unet = {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}}
    client.run({
        "unet": unet,
        "stock": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["unet", 0], "lora_name": name, "strength_model": 1.0}},
        "load": {"class_type": "QRLoRALoader", "inputs": {"lora_name": name}},
        "apply": {"class_type": "QRLoRAApply", "inputs": {"model": ["unet", 0], "qr_lora": ["load", 0], "strength": 1.0}},
        "save_stock": {"class_type": "ModelSave", "inputs": {"model": ["stock", 0], "filename_prefix": "qrresume/stock"}},
        "save_apply": {"class_type": "ModelSave", "inputs": {"model": ["apply", 0], "filename_prefix": "qrresume/apply"}},
    })
    log = comfy.log_tail(offset)
    assert "lora key not loaded" not in log, log
    stock, applied = (read_safetensors(comfy.path("output", "qrresume", f"{k}_00001_.safetensors"))[0] for k in ("stock", "apply"))
    assert stock.keys() == applied.keys() and all(torch.equal(stock[k], applied[k]) for k in stock)


def test_continuing_from_a_plain_adapter_says_it_restarts_the_optimizer(comfy, runs, text_and_vae):
    client = runs["client"]
    plain = "qrresume/b_plain.safetensors"
    client.run({
        "load": {"class_type": "QRLoRALoader", "inputs": {"lora_name": runs["b"]["qrlora"][0]["file"]}},
        "save": {"class_type": "QRLoRASave", "inputs": {"qr_lora": ["load", 0], "filename_prefix": plain[: -len(".safetensors")],
                                                        "compact": False, "dtype": "fp32"}},
    })
    saved = [f for f in os.listdir(comfy.path("models", "loras", "qrresume")) if f.startswith("b_plain")]
    assert len(saved) == 1
    g, train = graph(text_and_vae, 1, "qrresume/d", continue_from="qrresume/" + saved[0])
    ui = client.ui(client.run(g.prompt(), timeout=600), train.node_id)
    assert "continues from its ΔR with a fresh optimizer: its file is a plain adapter without training state" in ui["text"][0]
    assert ui["qrlora"][0]["steps"] == N + 1


def test_samples_appear_every_n_steps_on_the_node_and_next_to_the_checkpoints(comfy, runs):
    samples = runs["a"]["qrlora_samples"]
    assert [(s["step"], s["prompt"]) for s in samples] == [(step, p) for step in (N, 2 * N) for p in PROMPTS]
    run = runs["a"]["qrlora"][0]["file"].rsplit("_step", 1)[0]
    for k, s in enumerate(samples):
        assert s["file"] == f"{run}_step{s['step']:06}_sample{k % len(PROMPTS) + 1}.png"
        image = Image.open(comfy.path("models", "loras", s["file"]))
        assert image.size == (64, 64) and image.text["prompt"] == s["prompt"] and image.text["steps"] == str(s["step"])
    assert all(s["image"]["type"] == "temp" and os.path.isfile(comfy.path("temp", s["image"]["subfolder"], s["image"]["filename"]))
               for s in samples), "each sample has a copy the page shows"
    assert "images" not in runs["a"], "the samples are shown in the node's panel, labelled with their step (web/train.js)"
    assert "qrlora_samples" not in runs["b"]


# ------------------------------------------------------------ stopped by Cancel, in this process


@pytest.fixture
def inprocess(tmp_path, monkeypatch):
    """The pack imported here, ComfyUI's folders in this test's directory, one compute thread (as the server runs)."""
    from devkit.host import import_pack

    pack = import_pack()
    import comfy.model_management
    import folder_paths

    for name in ("loras", "qrlora_bases"):
        os.makedirs(tmp_path / name)
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(tmp_path / name)], {".safetensors"}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield pack, tmp_path
    torch.set_num_threads(threads)
    comfy.model_management.interrupt_current_processing(False)


def test_cancel_in_the_middle_of_a_step_then_resume_equals_the_run_that_never_stopped(inprocess, monkeypatch, rng):
    """Cancel lands between two accumulated micro-batches: the kept checkpoint is the last whole step, and resuming it continues exactly."""
    import comfy.model_management
    from comfyui_qrlora.nodes.train import QRLoRATrain
    from comfyui_qrlora.integration.training.session import TrainingSession
    from comfyui_qrlora.qrlora_core.formats import load_adapter as load
    from devkit import models

    pack, folders = inprocess
    latents = [{"samples": torch.randn(2, 4, 8, 8, generator=rng)}, {"samples": torch.randn(1, 4, 8, 16, generator=rng)}]
    positive = [[[torch.randn(1, 8, 768, generator=rng), {}]]]
    model = models.patcher("sd15")
    settings = {"rank": 4, "alpha": 0.0, "learning_rate": 1e-2, "batch_size": 2, "grad_accumulation": 3, "seed": 11,
                "optimizer": "AdamW", "training_dtype": "fp32", "gradient_checkpointing": False, "target_preset": "attention + MLP (paper)",
                "target_pattern": "", "triangular": True, "checkpoint_every": 0, "trigger_words": "<c>"}

    def train(steps, prefix, **extra):
        widgets = {k: [v] for k, v in {**settings, "steps": steps, "filename_prefix": prefix}.items()}
        return QRLoRATrain.execute(model=[model], latents=latents, positive=positive, **extra, **widgets)

    straight = train(5, "t/straight").args[0]

    micro_loss, calls = TrainingSession.micro_loss, []

    def cancel_during_step_3(self, draws):  # the Cancel button pressed while step 3 accumulates
        calls.append(1)
        if len(calls) == 2 * 3 + 2:
            comfy.model_management.interrupt_current_processing(True)
        return micro_loss(self, draws)

    monkeypatch.setattr(TrainingSession, "micro_loss", cancel_during_step_3)
    with pytest.raises(comfy.model_management.InterruptProcessingException) as stop:
        train(5, "t/stopped")
    monkeypatch.setattr(TrainingSession, "micro_loss", micro_loss)
    comfy.model_management.interrupt_current_processing(False)
    kept = "t/stopped_00001_step000002.safetensors"
    assert str(stop.value) == f"Stopped at step 2; kept {kept}."
    assert sorted(os.listdir(folders / "loras" / "t")) == sorted(["straight_00001_step000005.safetensors", os.path.basename(kept)])

    stopped = load(str(folders / "loras" / kept), source=kept)
    out = train(3, "t/resumed", qr_lora=[stopped])
    resumed = out.args[0]
    assert out.args[3] == 5 and "Resumed exactly from step 2" in out.ui["text"][0]
    assert all(torch.equal(straight.targets[n].delta_r, resumed.targets[n].delta_r) for n in straight.targets)
