"""Headless QR-LoRA training: what Train QR-LoRA does, from a shell, on one process or many (torchrun).

    python  <pack>/train.py --model flux1-dev.safetensors --data data.safetensors --steps 1000 ...
    torchrun --nproc_per_node 4 <pack>/train.py ...same arguments...

It is the node's run, not a second trainer: the model comes from
ComfyUI's own loaders (comfy.sd: Load Diffusion Model / Load Checkpoint,
CLIP and VAE loaders for images), the settings are TrainConfig (one flag
per field, with the node's defaults, limits and help), and training is
run.py's `train_to_files`: the same session, objective, layer,
checkpoints and file metadata, written into ComfyUI's loras folder. Under
torchrun each process trains on its own GPU against the same basis and
the same global batch (processes.py); process 0 writes the files.

ComfyUI is imported from --comfyui (default: the ComfyUI this pack is
installed in, i.e. the folder above custom_nodes/) only after the flags
are read, so the device and the base directory are set first, as
ComfyUI's own main.py does.
"""

import argparse
import logging
import os
import sys
from dataclasses import fields

from ...qrlora_core.errors import AdapterError
from ...qrlora_core.training import TrainConfig
from ...qrlora_core.training import config as settings
from ...qrlora_core.training.buckets import check_resolution

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # integration/training/ -> the pack
EXIT_INTERRUPTED, EXIT_BAD_INPUT = 130, 2


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a QR-LoRA as the Train QR-LoRA node does, without the server; under torchrun on several GPUs.",
    )
    host = p.add_argument_group("ComfyUI")
    host.add_argument("--comfyui", help="ComfyUI's folder (default: the one this pack is installed in, else $QRLORA_COMFYUI)")
    host.add_argument("--base-directory", help="ComfyUI's base directory: models/ (loras, qrlora_bases, ...) under it (default: --comfyui)")
    host.add_argument("--cpu", action="store_true", help="train on the CPU (processes talk through gloo instead of NCCL)")

    model = p.add_argument_group("model (file paths, or names inside ComfyUI's model folders)")
    model.add_argument("--model", help="a diffusion model file, as Load Diffusion Model loads it (models/diffusion_models)")
    model.add_argument("--checkpoint", help="a checkpoint with model, text encoder and VAE, as Load Checkpoint loads it (models/checkpoints)")
    model.add_argument("--clip", action="append", default=[], help="text encoder file(s) for --images (give it twice for Flux: clip_l and t5xxl)")
    model.add_argument("--clip-type", default="stable_diffusion", help="the CLIP loaders' type: stable_diffusion, sd3, flux, ...")
    model.add_argument("--vae", help="VAE file for --images")
    model.add_argument("--continue-from", help="an adapter in the loras folder to train further (the node's qr_lora input)")

    data = p.add_argument_group("data (one of --data and --images)")
    data.add_argument("--data", help="encoded latents + captions (.safetensors, written by --save-data)")
    data.add_argument("--images", help="a folder of images, each with its caption in a .txt file of the same name")
    data.add_argument("--caption", default="", help="caption of the images without a .txt file (with your trigger word)")
    data.add_argument("--resolution", type=int, default=512, help="--images are resized to the aspect-ratio bucket of about RESOLUTION² pixels nearest each (as QR-LoRA Training Data does)")
    data.add_argument("--save-data", help="encode --images into this .safetensors file and stop (then train from it with --data)")

    train = p.add_argument_group("training settings (the Train QR-LoRA node's inputs; --batch-size is the global batch)")
    for f in fields(TrainConfig):
        limits = settings.limits(f.name)
        kind = {"int": int, "float": float, "bool": bool}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
        text = f.metadata["help"].replace("%", "%%") + f" (default: {f.default!r})"
        if kind is bool:
            train.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            train.add_argument(_flag(f.name), dest=f.name, type=kind, default=f.default, choices=limits.get("options"), help=text)
    return p


def config_from(args) -> TrainConfig:
    """The settings, checked against the node's limits (the same words a widget's range would give)."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    for name, value in values.items():
        limits = settings.limits(name)
        if "min" in limits and value < limits["min"] or "max" in limits and value > limits["max"]:
            raise AdapterError(f"{_flag(name)} {value} is outside {limits['min']}..{limits['max']}; choose a value in that range.")
    return TrainConfig(**values)


# ------------------------------------------------------------ ComfyUI


def comfyui_folder(given: str | None) -> str:
    candidates = [given] if given else [os.path.dirname(os.path.dirname(PACK_ROOT)), os.environ.get("QRLORA_COMFYUI"), os.path.join(PACK_ROOT, ".comfyui")]
    for folder in filter(None, candidates):
        if os.path.isfile(os.path.join(folder, "comfy", "model_patcher.py")):
            return os.path.abspath(folder)
    raise AdapterError(f"ComfyUI's source is not at {given or ' or '.join(filter(None, candidates))}: pass --comfyui with the folder that holds ComfyUI's main.py.")


def import_comfy(folder: str, base_directory: str | None, cpu: bool) -> None:
    """ComfyUI's packages, with its arguments set before the device and the folders are decided."""
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    if base_directory:
        comfy.cli_args.args.base_directory = os.path.abspath(base_directory)
    import comfy.model_management  # noqa: F401  (decides the device now)
    import folder_paths  # noqa: F401  (decides the folders now)


def model_file(name: str, folder: str) -> str:
    """A path as given, or a name inside one of ComfyUI's model folders."""
    import folder_paths

    if os.path.isfile(name):
        return name
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise AdapterError(f"{name} is neither a file nor in ComfyUI's {folder} folder ({', '.join(folder_paths.get_folder_paths(folder))}): give its path.")
    return path


def _refused_by_comfyui(flag: str, name: str, error: RuntimeError) -> AdapterError:
    """ComfyUI's loaders refuse a file of another kind with a RuntimeError ("Could not detect model type", "VAE is
    invalid"); the CLI says it in one line. Out of memory is not a wrong file: it is raised as it is."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        raise error
    return AdapterError(f"{flag} {name}: ComfyUI cannot load it as that ({str(error).strip().removeprefix('ERROR: ').splitlines()[0]}): "
                        "give the right file for the option.")


def load_model(args):
    """The MODEL to train, through ComfyUI's own loaders (Load Diffusion Model, Load Checkpoint)."""
    import comfy.sd

    try:
        if args.checkpoint:
            return comfy.sd.load_checkpoint_guess_config(model_file(args.checkpoint, "checkpoints"), output_vae=False, output_clip=False)[0]
        if args.model:
            return comfy.sd.load_diffusion_model(model_file(args.model, "diffusion_models"))
    except RuntimeError as e:
        raise _refused_by_comfyui("--checkpoint" if args.checkpoint else "--model", args.checkpoint or args.model, e) from None
    raise AdapterError("No base model: give --model (a diffusion model file) or --checkpoint.")


def load_encoders(args):
    """(CLIP, VAE) for --images: from --clip / --vae, else from --checkpoint, through ComfyUI's loaders."""
    import comfy.sd
    import folder_paths

    clip = vae = None
    if args.checkpoint and not (args.clip and args.vae):
        _, clip, vae = comfy.sd.load_checkpoint_guess_config(
            model_file(args.checkpoint, "checkpoints"), output_vae=True, output_clip=True, output_model=False,
            embedding_directory=folder_paths.get_folder_paths("embeddings"))[:3]
    if args.clip:
        clip_type = getattr(comfy.sd.CLIPType, args.clip_type.upper(), None)
        if clip_type is None:
            raise AdapterError(f"--clip-type {args.clip_type} is not one of ComfyUI's: {', '.join(t.name.lower() for t in comfy.sd.CLIPType)}.")
        clip = comfy.sd.load_clip([model_file(c, "text_encoders") for c in args.clip],
                                  embedding_directory=folder_paths.get_folder_paths("embeddings"), clip_type=clip_type)
    if args.vae:
        import comfy.utils

        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(model_file(args.vae, "vae")))
        try:
            vae.throw_exception_if_invalid()  # another kind of file loads as a VAE with no model, refused only at its first encode
        except RuntimeError as e:
            raise _refused_by_comfyui("--vae", args.vae, e) from None
    if clip is None or vae is None:
        raise AdapterError("--images needs a text encoder and a VAE: give --checkpoint, or --clip and --vae.")
    return clip, vae


def encode_images(folder: str, clip, vae, caption: str, resolution: int):
    """The folder as QR-LoRA Training Data encodes it (data.py), read by ComfyUI's own "Load Image and Text Dataset from Folder"."""
    from comfy_extras.nodes_dataset import LoadImageTextDataSetFromFolderNode

    from .data import encode

    if not os.path.isdir(folder):
        raise AdapterError(f"{folder} is not a folder: give the folder that holds the training images.")
    try:
        images, captions = LoadImageTextDataSetFromFolderNode.execute(os.path.abspath(folder)).args  # an absolute path: any folder
    except ValueError:  # the stock loader's "No valid images found in input"
        raise AdapterError(f"{folder} holds no images (.png, .jpg, .jpeg, .webp): put the training images there.") from None
    return encode(images, captions, vae, clip, resolution, caption)


# ------------------------------------------------------------ the run


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .processes import Launch

    launch = Launch(args.cpu)
    logging.basicConfig(level=logging.INFO if launch.main else logging.WARNING, format=f"[rank {launch.rank}] %(message)s" if launch.distributed else "%(message)s")

    def say(text: str) -> None:
        if launch.main:
            print(text, flush=True)

    try:
        config = config_from(args)
        if bool(args.data) == bool(args.images):
            raise AdapterError("Give the training data as either --data (an encoded .safetensors file) or --images (a folder), one of them.")
        if args.save_data and not args.images:
            raise AdapterError("--save-data writes encoded --images; give --images too.")
        if args.images:
            check_resolution(args.resolution)  # before any model loads
        launch.pick_device()
        import_comfy(comfyui_folder(args.comfyui), args.base_directory, launch.cpu)
        launch.start()
        return _train(args, config, launch, say)
    except AdapterError as e:
        print(f"[rank {launch.rank}] {e}" if launch.distributed else str(e), file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


def _train(args, config: TrainConfig, launch, say) -> int:
    import torch

    import comfy.model_management
    import folder_paths

    from ...qrlora_core.formats import load_adapter
    from ...qrlora_core.training import datafile
    from .. import files
    from .processes import StopFlag
    from .run import train_to_files

    if args.images:
        encoded = None
        if launch.main:  # encoded once, by process 0; the others train on its latents and captions
            with torch.inference_mode():  # as ComfyUI runs VAE Encode and CLIP Text Encode: no graph kept
                clip, vae = load_encoders(args)
                data = encode_images(args.images, clip, vae, args.caption, args.resolution)
                say(f"Training data: {data.report(args.resolution)}")
                encoded = (data.latents, data.positive, data.texts)
            del clip, vae
        latents, positive, texts = launch.broadcast(encoded)
        if args.save_data:
            if launch.main:
                datafile.save(args.save_data, [x["samples"] for x in latents], positive, texts)
                say(f"Wrote {len(latents)} encoded images with {len(set(texts))} captions to {args.save_data}.")
            launch.finish()
            return 0
    else:
        latents, positive, texts = datafile.load(args.data)
    model = load_model(args)
    existing = None
    if args.continue_from:
        existing = load_adapter(files.adapter_path(args.continue_from), basis_loader=files.basis_store().load, source=args.continue_from)

    parallel = launch.parallel(config.batch_size, config.grad_accumulation)
    if parallel is not None and parallel.idle():
        say(f"Note: a step holds {config.batch_size * config.grad_accumulation} samples (batch size x gradient accumulation) "
            f"for {launch.world} processes, so {parallel.idle()} of them idle; raise either setting to use them all.")
    device = comfy.model_management.get_torch_device()
    say(f"Training {len(latents)} images on {launch.world} process(es) ({'CPU' if launch.cpu else 'GPU'}), "
        f"global batch {config.batch_size} x {config.grad_accumulation} accumulation, {config.steps} steps; "
        f"writing {config.filename_prefix}_*.safetensors into {folder_paths.get_folder_paths('loras')[0]}.")

    with StopFlag(say) as stop:
        def on_step(step: int, loss: float) -> None:
            say(f"step {step}/{config.steps} loss {loss:.6g}")
            if stop.agreed(parallel, device):
                comfy.model_management.interrupt_current_processing(True)  # the session stops at this step and keeps it

        with torch.inference_mode(False):
            try:
                run = train_to_files(model, latents, positive, config, existing, on_step=on_step, parallel=parallel)
            except comfy.model_management.InterruptProcessingException as e:  # process 0's is a Stopped: what it kept
                comfy.model_management.interrupt_current_processing(False)
                say(f"Stopped on request. {e}")
                launch.finish()
                return EXIT_INTERRUPTED
    for note in run.session.notes:
        say(note)
    say(f"Trained {run.total} steps: loss {run.losses[0]:.4g} -> {run.losses[-1]:.4g}. Saved {run.name} in the loras folder.")
    launch.finish()
    return 0
