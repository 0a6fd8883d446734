"""The headless trainer (train.py), alone and under torchrun (2 processes, gloo, CPU).

One run of the Train QR-LoRA node in this process, one of `python train.py`
and one of `torchrun --nproc_per_node 2 train.py` train the same small SD3
(random weights, loaded from its file by ComfyUI's own loader in all
three) on the same encoded data (train.py's data file) with the same
settings. The step's 6 samples (batch 2 x accumulation 3) are split 3 / 3
between the processes, so one micro-batch is cut in two: the two-process
adapter must equal the node's within float tolerance, and all three files
must agree in layout (names, shapes, dtypes) and metadata.

A folder of captioned images: train.py's encoding equals the stock node
chain's (Load Image, Upscale Image, VAE Encode, CLIP Text Encode), with
ComfyUI's own CLIP and VAE loaders on small random files.

An interrupted run from such a folder (encoded by process 0, sent to the
other): SIGTERM to process 1 alone stops both processes at the same step,
and process 0 keeps that step's checkpoint.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

from devkit import models
from devkit.host import COMFYUI_DIR, PACK_ROOT, import_pack

TRAIN = os.path.join(PACK_ROOT, "train.py")
SETTINGS = {"rank": 4, "steps": 3, "learning_rate": 1e-2, "batch_size": 2, "grad_accumulation": 3, "seed": 5,
            "training_dtype": "fp32", "gradient_checkpointing": False, "filename_prefix": "dist/run", "trigger_words": "<c>"}
TOLERANCE = 1e-4  # of the largest |ΔR|: the runs differ only in the order of float sums, which AdamW's normalisation amplifies where a gradient is near 0


@pytest.fixture(scope="module", autouse=True)
def pack():
    return import_pack()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small SD3 file and 4 encoded images with 2 captions (train.py's data file)."""
    from comfyui_qrlora.qrlora_core.training import datafile

    folder = tmp_path_factory.mktemp("distributed")
    model = str(folder / "sd3.safetensors")
    models.save_diffusion_model("sd3", model, seed=2)
    generator = torch.Generator().manual_seed(4)
    latents = [torch.randn(1, 16, 8, 8, generator=generator) for _ in range(4)]
    captions = [[[torch.randn(1, 6, 4096, generator=generator), {"pooled_output": torch.randn(1, 2048, generator=generator)}]] for _ in range(2)]
    data = str(folder / "data.safetensors")
    datafile.save(data, latents, [captions[i % 2] for i in range(4)], ["a <c> dog", "a <c> cat"] * 2)
    return folder, model, data


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three images of different sizes, two with a caption file; a small SD1.5, a random CLIP-L and a TAESD."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(6)
    for name, (w, h), caption in (("a.png", (80, 64), "a <c> dog"), ("b.png", (64, 64), None), ("c.jpg", (64, 96), "a <c> cat")):
        pixels = (torch.rand(h, w, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / name)
        if caption:
            (folder / (name.rsplit(".", 1)[0] + ".txt")).write_text(caption + "\n")
    files = {"model": str(folder / "sd15.safetensors"), "clip": str(folder / "clip_l.safetensors"), "vae": str(folder / "taesd.safetensors")}
    models.save_diffusion_model("sd15", files["model"], seed=1)
    models.save_clip_l(files["clip"])
    models.save_taesd(files["vae"])
    return str(folder), files


def command(processes: int, base: str, model: str, data: str | None, *extra: str, **overrides) -> list[str]:
    launcher = [sys.executable, TRAIN] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(29500 + os.getpid() % 1000), TRAIN]
    flags = ["--cpu", "--comfyui", COMFYUI_DIR, "--base-directory", base, "--model", model, *(["--data", data] if data else []), *extra]
    for name, value in {**SETTINGS, **overrides}.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return launcher + flags


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def trained_file(base: str, steps: int) -> str:
    found = glob.glob(os.path.join(base, "models", "loras", "dist", f"run_*_step{steps:06}.safetensors"))
    assert len(found) == 1, f"expected one file for step {steps} in {base}, found {found}"
    return found[0]


def read(path: str) -> tuple[dict, dict]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def node_file(folder, model_path: str, data: str) -> str:
    """The node's own file for the same model, data and settings, trained in this process."""
    import comfy.sd
    import folder_paths
    from comfyui_qrlora.nodes.train import QRLoRATrain
    from comfyui_qrlora.qrlora_core.training import TrainConfig, datafile

    saved = {k: folder_paths.folder_names_and_paths[k] for k in ("loras", "qrlora_bases")}
    for name in saved:
        os.makedirs(folder / "node" / name, exist_ok=True)
        folder_paths.folder_names_and_paths[name] = ([str(folder / "node" / name)], {".safetensors"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        latents, positive, _ = datafile.load(data)
        widgets = {**TrainConfig().__dict__, **SETTINGS}
        QRLoRATrain.execute(model=[comfy.sd.load_diffusion_model(model_path)], latents=latents, positive=positive, **{k: [v] for k, v in widgets.items()})
    finally:
        folder_paths.folder_names_and_paths.update(saved)
        torch.set_num_threads(threads)
    found = glob.glob(str(folder / "node" / "loras" / "dist" / "run_*_step000003.safetensors"))
    assert len(found) == 1
    return found[0]


def test_two_processes_train_what_one_does_and_write_the_nodes_files(files):
    folder, model, data = files
    runs = {}
    for processes in (1, 2):
        base = str(folder / f"base{processes}")
        started = time.time()
        done = subprocess.run(command(processes, base, model, data), env=environment(), capture_output=True, text=True, timeout=300)
        print(f"{processes} process(es): {time.time() - started:.1f} s\n{done.stdout[-2000:]}")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"on {processes} process(es)" in done.stdout
        runs[processes] = read(trained_file(base, 3))
        assert not glob.glob(os.path.join(base, "models", "loras", "dist", ".partial-*"))
    node = read(node_file(folder, model, data))

    for label, (tensors, metadata) in runs.items():
        assert {k: (v.shape, v.dtype) for k, v in tensors.items()} == {k: (v.shape, v.dtype) for k, v in node[0].items()}, label
        loss = float(metadata.pop("qrlora.loss"))
        node_metadata = dict(node[1])
        assert loss == pytest.approx(float(node_metadata.pop("qrlora.loss")), rel=1e-5)
        assert metadata == node_metadata, label
        assert json.loads(metadata["qrlora.training"])["batch_size"] == SETTINGS["batch_size"]  # the global batch, whatever the processes

    trained = [k for k in node[0] if "delta_r" in k]
    assert trained and max(float(node[0][k].abs().max()) for k in trained) > 1e-4  # it learned something to compare
    scale = max(float(node[0][k].abs().max()) for k in trained)
    for label, (tensors, _) in runs.items():
        for key, value in node[0].items():
            error = float((tensors[key] - value).abs().max())
            assert error <= TOLERANCE * max(scale, float(value.abs().max())), f"{label} process(es), {key}: off by {error}"


def test_a_folder_of_images_is_encoded_as_the_training_data_node_and_the_stock_nodes_encode_it(image_folder, tmp_path):
    import comfy.sd
    import comfy.utils
    import nodes
    import numpy as np
    from PIL import Image
    from comfyui_qrlora.qrlora_core.training import datafile

    folder, files = image_folder
    data = str(tmp_path / "encoded.safetensors")
    done = subprocess.run(command(1, str(tmp_path), files["model"], None, "--images", folder, "--caption", "a <c> bird", "--resolution", "64",
                                  "--clip", files["clip"], "--vae", files["vae"], "--save-data", data),
                          env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    latents, positive, texts = datafile.load(data)
    assert sorted(texts) == sorted(["a <c> dog", "a <c> bird", "a <c> cat"])  # the stock folder loader's order; one 64 x 64 bucket

    clip = comfy.sd.load_clip([files["clip"]], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(files["vae"]))
    for name, text in zip(("a.png", "b.png", "c.jpg"), ("a <c> dog", "a <c> bird", "a <c> cat")):
        i = texts.index(text)
        image = torch.from_numpy(np.asarray(Image.open(os.path.join(folder, name)).convert("RGB"), dtype=np.float32) / 255.0)[None]
        scaled = nodes.ImageScale().upscale(image, "lanczos", 64, 64, "center")[0]
        expected = nodes.VAEEncode().encode(vae, scaled)[0]["samples"]
        assert torch.allclose(latents[i]["samples"], expected, atol=1e-5), name
        caption = nodes.CLIPTextEncode().encode(clip, text)[0]
        assert torch.allclose(positive[i][0][0], caption[0][0], atol=1e-5)
        assert torch.allclose(positive[i][0][1]["pooled_output"], caption[0][1]["pooled_output"], atol=1e-5)
    assert positive[0] is not positive[1] and all(p[0][0].shape == positive[0][0][0].shape for p in positive)


def test_a_signal_to_one_process_stops_all_at_one_step_and_keeps_it(image_folder, tmp_path):
    folder, files = image_folder
    base = str(tmp_path / "interrupted")
    images = ["--images", folder, "--caption", "a <c> bird", "--resolution", "64", "--clip", files["clip"], "--vae", files["vae"]]
    run = subprocess.Popen(command(2, base, files["model"], None, *images, steps=100000, checkpoint_every=0), env=environment(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        for line in run.stdout:
            lines.append(line)
            if line.startswith("step 2/"):
                break
        os.kill(_worker(run.pid, rank=1), signal.SIGTERM)
        out, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    output = "".join(lines) + out
    print(output[-3000:])
    assert "Training 3 images on 2 process(es)" in output  # process 0's encoding reached both
    steps = [int(line.split()[1].split("/")[0]) for line in output.splitlines() if line.startswith("step ")]
    assert "Stopped on request" in output, output[-3000:]
    assert 2 <= steps[-1] < 100000
    kept = read(trained_file(base, steps[-1]))[1]
    assert int(kept["qrlora.steps"]) == steps[-1]
    assert run.returncode != 0  # torchrun reports the stop


def _worker(parent: int, rank: int, timeout: float = 30) -> int:
    """The pid of torchrun's worker process with RANK=`rank`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if ppid == parent and f"RANK={rank}".encode() in env:
                return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} under {parent}")


@pytest.mark.parametrize("wrong", ["model", "vae"])
def test_a_file_of_another_kind_given_to_train_py_is_one_line_not_a_traceback(image_folder, tmp_path, wrong):
    """ComfyUI's loaders raise RuntimeError on it ("Could not detect model type", "VAE is invalid")."""
    folder, files = image_folder
    given = {**files, wrong: files["clip"]}  # the text encoder's file where a model or a VAE belongs
    done = subprocess.run(command(1, str(tmp_path), given["model"], None, "--images", folder, "--caption", "a <c> bird", "--resolution", "64",
                                  "--clip", given["clip"], "--vae", given["vae"]),
                          env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"--{wrong} {given[wrong]}: ComfyUI cannot load it as that" in done.stderr.strip().splitlines()[-1], done.stderr[-3000:]
