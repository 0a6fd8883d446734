"""Model files for the server, built once per session with ComfyUI's own classes."""

import os

import pytest
import safetensors.torch
import torch

from devkit import models
from devkit.host import import_pack

SD15 = "tiny_sd15.safetensors"
SD3 = "tiny_sd3.safetensors"
CLIP_L = "tiny_clip_l.safetensors"
TAESD = "tiny_taesd.safetensors"


@pytest.fixture(scope="session")
def base_models(comfy):
    """{arch: state dict} of the small models written into the server's models folder."""
    out = {}
    for arch, name in (("sd15", SD15), ("sd3", SD3)):
        path = comfy.path("models", "diffusion_models", name)
        if not os.path.exists(path):
            models.save_diffusion_model(arch, path)
        out[arch] = safetensors.torch.load_file(path)
    return out


@pytest.fixture(scope="session")
def text_and_vae(comfy):
    """A random CLIP-L (stock CLIPLoader) and TAESD (stock VAELoader) for sampling workflows."""
    os.makedirs(comfy.path("models", "text_encoders"), exist_ok=True)
    os.makedirs(comfy.path("models", "vae"), exist_ok=True)
    if not os.path.exists(comfy.path("models", "text_encoders", CLIP_L)):
        models.save_clip_l(comfy.path("models", "text_encoders", CLIP_L))
    if not os.path.exists(comfy.path("models", "vae", TAESD)):
        models.save_taesd(comfy.path("models", "vae", TAESD))
    return CLIP_L, TAESD


# ------------------------------------------------------------ in-process training (no server)


@pytest.fixture(scope="module")
def pack():
    """The pack imported in this process, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the test server runs: far faster on the shared 2-core machine
    yield import_pack()
    torch.set_num_threads(threads)


@pytest.fixture
def folders(pack, tmp_path, monkeypatch):
    """ComfyUI's folders pointed at this test's temporary directory."""
    import folder_paths

    for name in ("loras", "qrlora_bases"):
        os.makedirs(tmp_path / name)
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(tmp_path / name)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path / "temp"))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    return tmp_path
