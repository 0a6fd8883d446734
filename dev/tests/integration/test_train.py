"""Train QR-LoRA through the real server, as users' scripts queue it.

The model is a small SD1.5 UNet (random weights, real architecture) loaded
with the stock UNETLoader. Latents and conditioning come from the stock
LoadTrainingDataset node, which reads a shard this test writes into the
server's output folder: fixed target latents and a fixed 768-wide caption
embedding, without a CLIP text encoder (ComfyUI's CLIP-L is fixed at 123 M
parameters, too heavy for these 2-core machines, and a random one would
encode nothing meaningful anyway).

On a random UNet most of the x0 loss is sigma^2 |noise|^2, which no adapter
unlearns in a few steps, and the loss of one step depends mostly on the
sigma drawn for it. So "the loss drops" is measured against the same run
untrained (learning rate 1e-7, same seed, hence the same images, noise and
sigmas at every step): every trained step after the first must be lower.
"""

import glob
import json
import os
import time

import pytest
import safetensors.torch
import torch

from comfyui_qrlora.qrlora_core.decompose import subspace_error
from comfyui_qrlora.qrlora_core.formats import load_adapter
from comfyui_qrlora.qrlora_core.merge import Q_TOLERANCE
from devkit.models import save_diffusion_model

pytestmark = pytest.mark.server

UNET = "qrtrain_sd15.safetensors"
DATASET = "qrtrain_dataset"
STEPS = 10


@pytest.fixture(scope="module")
def base_files(comfy):
    unet_path = comfy.path("models", "diffusion_models", UNET)
    state = save_diffusion_model("sd15", unet_path, seed=3)
    generator = torch.Generator().manual_seed(11)
    latents = [{"samples": torch.randn(2, 4, 8, 8, generator=generator)}]  # two fixed 64 px images
    caption = [[[torch.randn(1, 8, 768, generator=generator), {}]]]
    os.makedirs(comfy.path("output", DATASET), exist_ok=True)
    torch.save({"latents": latents, "conditioning": caption}, comfy.path("output", DATASET, "shard_0000.pkl"))
    return state


def train_prompt(prefix: str, **settings) -> dict:
    inputs = {
        "model": ["unet", 0], "latents": ["data", 0], "positive": ["data", 1],
        "rank": 4, "alpha": 0.0, "steps": STEPS, "learning_rate": 2e-2, "batch_size": 1, "grad_accumulation": 1, "seed": 7,
        "optimizer": "AdamW", "training_dtype": "fp32", "gradient_checkpointing": True,
        "target_preset": "attention + MLP (paper)", "target_pattern": "", "triangular": True,
        "checkpoint_every": 4, "filename_prefix": prefix, "trigger_words": "<qr> style",
    }
    inputs.update(settings)
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "data": {"class_type": "LoadTrainingDataset", "inputs": {"folder_name": DATASET}},
        "train": {"class_type": "QRLoRATrain", "inputs": inputs},
    }


def sample_prompt(prefix: str) -> dict:
    """One Euler step of the base model, saved as a .latent file."""
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "data": {"class_type": "LoadTrainingDataset", "inputs": {"folder_name": DATASET}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["unet", 0], "positive": ["data", 1], "negative": ["data", 1], "latent_image": ["data", 0],
            "seed": 5, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": prefix}},
    }


def output_file(comfy, pattern: str) -> str:
    found = sorted(glob.glob(comfy.path("output", pattern)))
    assert len(found) == 1, f"expected one file for {pattern}, found {found}"
    return found[0]


def summary(client, entry) -> dict:
    return client.ui(entry, "train")["qrlora"][0]


@pytest.fixture(scope="module")
def runs(comfy, base_files):
    """The trainings every test below looks at, queued once: A, A again, and A untrained."""
    from devkit.server import Client

    client = Client(comfy.url)
    started = time.time()
    before = client.run(sample_prompt("qrtest/base_before"))
    a = client.run({
        **train_prompt("qrtest/a"),
        "save_trained": {"class_type": "ModelSave", "inputs": {"model": ["train", 1], "filename_prefix": "qrtest/trained_model"}},
        "plot": {"class_type": "LossGraphNode", "inputs": {"loss": ["train", 2], "filename_prefix": "qrtest/loss"}},
    })
    again = client.run(train_prompt("qrtest/a_again"))
    untrained = client.run(train_prompt("qrtest/untrained", learning_rate=1e-7))
    after = client.run({
        **sample_prompt("qrtest/base_after"),
        "save_base": {"class_type": "ModelSave", "inputs": {"model": ["unet", 0], "filename_prefix": "qrtest/base_model"}},
    })
    print(f"four prompts with three trainings of {STEPS} steps: {time.time() - started:.1f} s")
    return {"client": client, "a": a, "again": again, "untrained": untrained, "before": before, "after": after}


def loras(comfy, pattern="qrlora/*") -> list[str]:
    return sorted(os.path.relpath(p, comfy.path("models", "loras")) for p in glob.glob(comfy.path("models", "loras", pattern)))


def test_training_lowers_the_loss_reproducibly(comfy, runs):
    client = runs["client"]
    trained, repeat, untrained = (summary(client, runs[k])["losses"] for k in ("a", "again", "untrained"))
    assert len(trained) == STEPS
    assert trained == repeat  # same seed, same inputs: the same run, step for step
    assert trained[0] == pytest.approx(untrained[0], rel=1e-6)  # step 1 runs before any update
    ratios = [t / u for t, u in zip(trained[1:], untrained[1:])]
    assert all(r < 1.0 for r in ratios), ratios
    assert sum(ratios) / len(ratios) < 0.99, ratios
    a, b = (load_adapter(comfy.path("models", "loras", summary(client, runs[k])["file"])) for k in ("a", "again"))
    assert all(torch.equal(a.targets[n].delta_r, b.targets[n].delta_r) for n in a.targets)


def test_checkpoints_hold_what_training_returned_and_the_metadata(comfy, runs):
    client, info = runs["client"], summary(runs["client"], runs["a"])
    assert info["file"] == f"qrtest/a_00001_step{STEPS:06}.safetensors"
    files = loras(comfy, "qrtest/a_00001_*")
    assert files == [f"qrtest/a_00001_step{s:06}.safetensors" for s in (4, 8, STEPS)]
    final = load_adapter(comfy.path("models", "loras", files[-1]))
    assert final.format == "native" and final.rank == 4 and final.scale == 1.0
    assert final.metadata["trigger_words"] == "<qr> style"
    assert int(final.metadata["steps"]) == STEPS
    assert float(final.metadata["loss"]) == pytest.approx(info["losses"][-1])
    assert final.metadata["base_fingerprint"] and final.metadata["basis"]
    assert len(final.targets) == info["layers"] == 40  # 4 transformer blocks x (attn1, attn2: q k v out; ff: 2)
    for t in final.targets.values():  # triangular: nothing below the diagonal
        assert not torch.tril(t.delta_r, -1).any()
    mid = load_adapter(comfy.path("models", "loras", files[0]))
    assert int(mid.metadata["steps"]) == 4
    assert not glob.glob(comfy.path("models", "loras", "qrtest", ".partial-*"))
    shown = client.ui(runs["a"], "train")
    assert f"Saved {info['file']}." in shown["text"][0] and shown["loss"], "the node shows what it saved and the losses the page draws"


def test_saved_file_loaded_and_applied_gives_the_trainers_model(comfy, runs, base_files):
    client = runs["client"]
    name = summary(client, runs["a"])["file"]
    client.run({
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "load": {"class_type": "QRLoRALoader", "inputs": {"lora_name": name}},
        "apply": {"class_type": "QRLoRAApply", "inputs": {"model": ["unet", 0], "qr_lora": ["load", 0], "strength": 1.0}},
        "save": {"class_type": "ModelSave", "inputs": {"model": ["apply", 0], "filename_prefix": "qrtest/loaded_model"}},
    })
    trained = safetensors.torch.load_file(output_file(comfy, "qrtest/trained_model_*.safetensors"))
    loaded = safetensors.torch.load_file(output_file(comfy, "qrtest/loaded_model_*.safetensors"))
    assert trained.keys() == loaded.keys()
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)
    changed = [k for k in trained if not torch.equal(trained[k], base_files[k[len("model.diffusion_model."):]])]
    assert len(changed) == 40 and all(k.endswith(".weight") for k in changed)


def test_base_model_is_untouched_by_training(comfy, runs, base_files):
    saved = safetensors.torch.load_file(output_file(comfy, "qrtest/base_model_*.safetensors"))
    assert all(torch.equal(saved["model.diffusion_model." + k], v) for k, v in base_files.items())
    cached = [m for kind, m in runs["after"]["status"]["messages"] if kind == "execution_cached"]
    assert "sample" not in cached[0]["nodes"], "the base model's sampling must really run again after training"
    before = safetensors.torch.load_file(output_file(comfy, "qrtest/base_before_*.latent"))
    after = safetensors.torch.load_file(output_file(comfy, "qrtest/base_after_*.latent"))
    assert torch.equal(before["latent_tensor"], after["latent_tensor"])  # no training wrapper left on the layers


def test_two_adapters_of_one_base_share_q_and_merge_without_fallback(comfy, runs):
    client = runs["client"]
    first, second = summary(client, runs["a"])["file"], summary(client, runs["untrained"])["file"]
    a, b = (load_adapter(comfy.path("models", "loras", f)) for f in (first, second))
    assert a.metadata["basis"] == b.metadata["basis"]  # decomposed once, then loaded
    assert os.path.isfile(comfy.path("models", "qrlora_bases", a.metadata["basis"] + ".safetensors"))
    assert all(torch.equal(a.targets[n].q, b.targets[n].q) for n in a.targets)  # the one stored basis
    assert max(subspace_error(a.targets[n].q, b.targets[n].q) for n in a.targets) <= Q_TOLERANCE
    entry = client.run({
        "a": {"class_type": "QRLoRALoader", "inputs": {"lora_name": first}},
        "b": {"class_type": "QRLoRALoader", "inputs": {"lora_name": second}},
        "merge": {"class_type": "QRLoRAMerge", "inputs": {"qr_lora_1": ["a", 0], "weight_1": 1.0, "qr_lora_2": ["b", 0], "weight_2": 0.5}},
        "save": {"class_type": "QRLoRASave", "inputs": {"qr_lora": ["merge", 0], "filename_prefix": "qrtest/merged", "compact": False, "dtype": "fp32"}},
    })
    report = client.ui(entry, "merge")["text"][0]
    assert f"{len(a.targets)} layers merged as one ΔR sum" in report
    assert "different bases" not in report and "mixed bases" not in report


def test_interrupt_keeps_a_valid_checkpoint_and_no_partial_file(comfy, runs):
    client = runs["client"]
    prompt_id = client.queue(train_prompt("qrtest/stopped", steps=400, checkpoint_every=2, seed=99))
    first = comfy.path("models", "loras", "qrtest", "stopped_00001_step000002.safetensors")
    deadline = time.time() + 60
    while not os.path.exists(first) and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(first), "training never reached its first checkpoint"
    status, _ = client.post("/interrupt", {})
    assert status == 200
    entry = client.wait(prompt_id, timeout=60)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds and entry["status"]["status_str"] == "error"
    files = loras(comfy, "qrtest/stopped_00001_*")
    assert not glob.glob(comfy.path("models", "loras", "qrtest", ".partial-*"))
    last = load_adapter(comfy.path("models", "loras", files[-1]))
    steps = int(last.metadata["steps"])
    assert 2 <= steps < 400 and files[-1] == f"qrtest/stopped_00001_step{steps:06}.safetensors"
    assert all(torch.isfinite(t.delta_r).all() and t.delta_r.any() for t in last.targets.values())


def test_trainer_interface_and_a_wrong_setting_explained(client, base_files):
    info = client.object_info("QRLoRATrain")["QRLoRATrain"]
    assert info["display_name"] == "Train QR-LoRA" and info["category"] == "QR-LoRA/training"
    assert info["output"] == ["QR_LORA", "MODEL", "LOSS_MAP", "INT"]  # the loss as an image: the stock Plot Loss Graph node
    from comfyui_qrlora.qrlora_core.training import config as settings

    from dataclasses import fields

    offered = {**info["input"]["required"], **info["input"].get("optional", {})}
    for f in fields(settings.TrainConfig):  # every setting is a widget with the field's default, tooltip and choices
        spec = offered[f.name]
        assert spec[1]["default"] == f.default and spec[1]["tooltip"] == settings.help_text(f.name), f.name
        if "options" in settings.limits(f.name):
            assert list(spec[1].get("options", spec[0])) == list(settings.limits(f.name)["options"]), f.name
    assert "reference uses 4" in offered["grad_accumulation"][1]["tooltip"] and offered["grad_accumulation"][1]["default"] == 4
    assert {"objective", "guidance", "weight_decay", "max_grad_norm"} <= set(info["input"]["optional"])  # older workflows lack them
    error = client.run_expecting_error(train_prompt("qrtest/too_big", rank=400))
    assert "Rank 400 is larger than every chosen layer allows" in error["exception_message"] and "lower the rank" in error["exception_message"]


def test_content_and_style_on_halves_of_one_basis_merge_into_orthogonal_parts(comfy, runs):
    """basis_part: two adapters of one rank and base train disjoint rows of ΔR, so their Merge ΔR sum keeps both
    exactly; continuing an adapter that has values outside the half trains all of it (never drops them)."""
    client = runs["client"]
    halves = {part: client.run(train_prompt(f"qrtest/{part.split()[0]}", basis_part=part, checkpoint_every=0))
              for part in ("first half", "second half")}
    files = {part: summary(client, entry)["file"] for part, entry in halves.items()}
    adapters = {part: load_adapter(comfy.path("models", "loras", f)) for part, f in files.items()}
    for part, adapter in adapters.items():
        assert json.loads(adapter.metadata["training"])["basis_part"] == part
        kept = slice(0, 2) if part == "first half" else slice(2, 4)
        for t in adapter.targets.values():
            assert t.delta_r[kept].any() and not torch.cat([t.delta_r[:kept.start], t.delta_r[kept.stop:]]).any()
        assert summary(client, halves[part])["trained_values"] * 2 == summary(client, runs["a"])["trained_values"]
    entry = client.run({
        "a": {"class_type": "QRLoRALoader", "inputs": {"lora_name": files["first half"]}},
        "b": {"class_type": "QRLoRALoader", "inputs": {"lora_name": files["second half"]}},
        "merge": {"class_type": "QRLoRAMerge", "inputs": {"qr_lora_1": ["a", 0], "weight_1": 1.0, "qr_lora_2": ["b", 0], "weight_2": 1.0}},
        "save": {"class_type": "QRLoRASave", "inputs": {"qr_lora": ["merge", 0], "filename_prefix": "qrtest/halves", "compact": False, "dtype": "fp32"}},
    })
    assert "merged as one ΔR sum" in client.ui(entry, "merge")["text"][0]
    merged = load_adapter(comfy.path("models", "loras", *loras(comfy, "qrtest/halves*")[0].split("/")))
    for name, t in merged.targets.items():  # each half is its own adapter's, untouched by the other (to float32 rounding)
        assert torch.allclose(t.delta_r[:2], adapters["first half"].targets[name].delta_r[:2], rtol=1e-5, atol=1e-7)
        assert torch.allclose(t.delta_r[2:], adapters["second half"].targets[name].delta_r[2:], rtol=1e-5, atol=1e-7)
    prompt = train_prompt("qrtest/continued", basis_part="second half", steps=1, checkpoint_every=0)
    prompt["load"] = {"class_type": "QRLoRALoader", "inputs": {"lora_name": summary(client, runs["a"])["file"]}}
    prompt["train"]["inputs"]["qr_lora"] = ["load", 0]
    entry = client.run(prompt)
    assert "values outside the second half of its basis, so it trains all of it" in client.ui(entry, "train")["text"][0]
    continued = load_adapter(comfy.path("models", "loras", summary(client, entry)["file"]))
    assert json.loads(continued.metadata["training"])["basis_part"] == "all"
    assert all(t.delta_r[:2].any() for t in continued.targets.values())
