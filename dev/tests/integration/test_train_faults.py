"""Training under faults, through the real server: bad data, a diverging run,
a full disk, two runs queued back to back. Each ends in a clear message or a
correct result; nothing half-written, the server keeps serving."""

import glob
import json
import os

import pytest
import torch

from integration.test_train import DATASET, UNET, base_files, train_prompt  # noqa: F401  (base_files is a fixture)
from comfyui_qrlora.qrlora_core.formats import load_adapter
from devkit.server import Client, ComfyServer, make_base_directory

pytestmark = pytest.mark.server


def write_dataset(comfy, name: str, latents: torch.Tensor, captions: int):
    generator = torch.Generator().manual_seed(5)
    conditioning = [[[torch.randn(1, 8, 768, generator=generator), {}] for _ in range(captions)]]
    os.makedirs(comfy.path("output", name), exist_ok=True)
    torch.save({"latents": [{"samples": latents}], "conditioning": conditioning}, comfy.path("output", name, "shard_0000.pkl"))


def with_dataset(prompt: dict, name: str) -> dict:
    prompt["data"]["inputs"]["folder_name"] = name
    return prompt


def partial_files(root: str) -> list[str]:
    return glob.glob(os.path.join(root, "**", ".partial-*"), recursive=True)


def test_captions_that_do_not_match_the_images_are_explained(comfy, client, base_files):
    write_dataset(comfy, "qrfault_mismatch", torch.randn(2, 4, 8, 8), captions=3)
    error = client.run_expecting_error(with_dataset(train_prompt("qrfault/mismatch", steps=2), "qrfault_mismatch"))
    assert "3 captions (conditionings) for 2 training images" in error["exception_message"]
    assert client.object_info("QRLoRATrain")


def test_empty_latents_are_explained(comfy, client, base_files):
    write_dataset(comfy, "qrfault_empty", torch.randn(0, 4, 8, 8), captions=1)
    error = client.run_expecting_error(with_dataset(train_prompt("qrfault/empty", steps=2), "qrfault_empty"))
    assert "latents are empty" in error["exception_message"]
    assert not glob.glob(comfy.path("models", "loras", "qrfault", "empty_*"))


def test_a_non_finite_loss_stops_with_advice_and_keeps_the_last_good_checkpoint(comfy, client, base_files):
    """One of eight training latents is NaN, so the run's loss turns NaN when the seeded draw reaches it.

    A learning rate that diverges ends the same way (the loss check is the
    same), but on these normalised UNets a huge learning rate only makes the
    loss large, not infinite, so the server test poisons the data instead;
    tests/integration/test_train_inprocess.py breaks the model mid-run.
    """
    latents = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    latents[5] = float("nan")
    write_dataset(comfy, "qrfault_nan", latents, captions=1)
    prompt = with_dataset(train_prompt("qrfault/nan", steps=40, checkpoint_every=1, seed=7), "qrfault_nan")
    text = client.run_expecting_error(prompt)["exception_message"]
    assert "the loss became nan" in text and "Lower the learning rate" in text, text
    saved = sorted(glob.glob(comfy.path("models", "loras", "qrfault", "nan_*.safetensors")))
    assert saved, "no good step was kept (the seeded draw hit the NaN image first: pick another seed)"
    assert os.path.basename(saved[-1]) in text  # the message names the file to continue from
    for path in saved:  # every checkpoint left behind is whole and finite
        adapter = load_adapter(path)
        assert all(torch.isfinite(t.delta_r).all() for t in adapter.targets.values())
    assert not partial_files(comfy.path("models", "loras"))


def test_two_trainings_queued_back_to_back_equal_their_solo_runs(comfy, client, base_files):
    first = client.queue(train_prompt("qrfault/queued_a", steps=4, seed=21))
    second = client.queue(train_prompt("qrfault/queued_b", steps=4, seed=22))
    entries = [client.wait(first), client.wait(second)]
    assert all(e["status"]["status_str"] == "success" for e in entries), [client.error(e) for e in entries]
    solo = client.run(train_prompt("qrfault/solo_b", steps=4, seed=22))
    queued_b, solo_b = (client.ui(e, "train")["qrlora"][0] for e in (entries[1], solo))
    assert queued_b["losses"] == solo_b["losses"]
    a, b = (load_adapter(comfy.path("models", "loras", s["file"])) for s in (queued_b, solo_b))
    assert all(torch.equal(a.targets[n].delta_r, b.targets[n].delta_r) for n in a.targets)


def test_a_full_disk_is_explained_and_leaves_nothing_half_written(tmp_path, base_files, comfy):
    """A server whose file writes fail past 16 KiB (RLIMIT_FSIZE), as on a full disk."""
    base = make_base_directory(str(tmp_path / "full-disk-base"))
    os.link(comfy.path("models", "diffusion_models", UNET), os.path.join(base, "models", "diffusion_models", UNET))
    os.makedirs(os.path.join(base, "output", DATASET))
    os.link(comfy.path("output", DATASET, "shard_0000.pkl"), os.path.join(base, "output", DATASET, "shard_0000.pkl"))
    earlier = os.path.join(base, "models", "loras", "qrfault", "earlier.safetensors")
    os.makedirs(os.path.dirname(earlier))
    with open(earlier, "wb") as f:
        f.write(b"an earlier adapter the failed write must not touch")
    server = ComfyServer(base, file_size_limit=16 * 1024).start()
    try:
        client = Client(server.url)
        error = client.run_expecting_error(train_prompt("qrfault/full", steps=4, checkpoint_every=2))
        assert "disk may be full" in error["exception_message"] and "no partial file" in error["exception_message"]
        assert not partial_files(os.path.join(base, "models", "loras"))
        with open(earlier, "rb") as f:
            assert f.read() == b"an earlier adapter the failed write must not touch"
        assert client.object_info("QRLoRATrain"), "the server stopped serving"
    finally:
        server.stop()


@pytest.mark.parametrize("prefix,words", [
    ("qrfault/afile/run", "'qrfault/afile' in the loras folder is a file, not a folder"),
    ("qrfault/" + "x" * 300, "more than a file name may be (255)"),
    ("qrfault/nul\x00byte", "contains a NUL character"),
])
def test_a_bad_filename_prefix_is_found_before_step_1(comfy, client, base_files, prefix, words):
    """Checked before the basis is decomposed or any step runs: a rank no other test trains at leaves no basis behind."""
    afile = comfy.path("models", "loras", "qrfault", "afile")
    os.makedirs(os.path.dirname(afile), exist_ok=True)
    with open(afile, "w") as f:
        f.write("a file where the prefix wants a folder")
    error = client.run_expecting_error(train_prompt(prefix, rank=3, steps=400))
    text = error["exception_message"]
    assert words in text and "disk may be full" not in text, text
    assert not glob.glob(comfy.path("models", "qrlora_bases", "r3-*")), "work was done before the prefix was checked"
    assert not partial_files(comfy.path("models", "loras"))
    with open(afile) as f:
        assert f.read() == "a file where the prefix wants a folder"


@pytest.mark.parametrize("setting", ["learning_rate", "alpha", "guidance", "max_grad_norm", "weight_decay"])
def test_non_finite_numbers_typed_through_prompt_are_refused(client, base_files, setting):
    """NaN passes ComfyUI's min/max checks (every comparison with it is false), so the node refuses it; infinities
    already stop at ComfyUI's range check."""
    error = client.run_expecting_error(train_prompt("qrfault/nonfinite", **{setting: float("nan")}))
    assert error["exception_message"].startswith(f"{setting} is nan, which is not a number training can use"), error["exception_message"]
    status, body = client.post("/prompt", {"prompt": train_prompt("qrfault/nonfinite", **{setting: float("inf")})})
    assert status == 400 and "bigger than max" in json.dumps(body), body


SD3 = "qrtrain_sd3.safetensors"


def test_layers_smaller_than_the_rank_are_skipped_with_a_note(comfy, client):
    """SD3's proj_out is 64 x 128: at rank 100 it is left out and said so; the attention layers train."""
    from devkit.models import save_diffusion_model

    save_diffusion_model("sd3", comfy.path("models", "diffusion_models", SD3), seed=4)
    generator = torch.Generator().manual_seed(6)
    os.makedirs(comfy.path("output", "qrfault_sd3"), exist_ok=True)
    caption = [[[torch.randn(1, 8, 4096, generator=generator), {"pooled_output": torch.randn(1, 2048, generator=generator)}]]]
    torch.save({"latents": [{"samples": torch.randn(1, 16, 8, 8, generator=generator)}], "conditioning": caption},
               comfy.path("output", "qrfault_sd3", "shard_0000.pkl"))
    prompt = with_dataset(train_prompt("qrfault/sd3", steps=2, rank=100, target_preset="custom pattern", target_pattern=r"(attn\.to_q|proj_out)$"), "qrfault_sd3")
    prompt["unet"]["inputs"]["unet_name"] = SD3
    entry = client.run(prompt)
    text = client.ui(entry, "train")["text"][0]
    assert "1 of 3 layers are smaller than rank 100 and are not trained (e.g. transformer.proj_out, (64, 128), at most rank 64)" in text, text
    adapter = load_adapter(comfy.path("models", "loras", client.ui(entry, "train")["qrlora"][0]["file"]))
    assert sorted(adapter.targets) == ["transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.1.attn.to_q"]
    assert adapter.rank == 100 and all(t.delta_r.any() for t in adapter.targets.values())
    prompt = with_dataset(train_prompt("qrfault/sd3_none", steps=2, rank=200, target_preset="custom pattern", target_pattern=r"proj_out$"), "qrfault_sd3")
    prompt["unet"]["inputs"]["unet_name"] = SD3
    text = client.run_expecting_error(prompt)["exception_message"]
    assert "Rank 200 is larger than every chosen layer allows (e.g. transformer.proj_out, (64, 128), at most rank 64)" in text, text
