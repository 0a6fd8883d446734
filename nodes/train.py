"""Train QR-LoRA: MODEL + latents + caption -> a trained QR_LORA, checkpoints in `loras`.

The node gathers its inputs and runs `train_to_files`
(integration/training/run.py: checkpoints, the session, what went wrong),
sending the loss, the sample images and a stop by Cancel to the page as
they come (integration/routes.py names the events; web/train.js draws
them). The base model is never written to; the MODEL output is the base
with the trained adapter applied as ordinary patches, exactly what Load
QR-LoRA + Apply to Model give.
"""

import time
from dataclasses import fields

import torch
from comfy_api.latest import io

from ..integration.routes import LIVE_LOSS_EVENT, SAMPLES_EVENT, STOPPED_EVENT, running_server
from ..integration.targets import patches_for, resolve_targets
from ..integration.training.run import Stopped, train_to_files
from ..qrlora_core.training import TrainConfig
from ..qrlora_core.training import config as settings
from .adapter_socket import TRAINING_CATEGORY, QRLoRAType, describe_adapter
from .train_samples import SampleSettingsType

LossMap = io.Custom("LOSS_MAP")  # ComfyUI's loss history type: {"loss": [float, ...]}


def setting_inputs() -> list:
    """One widget per TrainConfig field: its type, default, limits and tooltip from the field itself."""
    inputs = []
    for f in fields(TrainConfig):
        meta = f.metadata
        common = {"default": f.default, "tooltip": meta["help"], "optional": meta["optional"], **meta["widget"]}
        limits = settings.limits(f.name)
        if "options" in limits:
            inputs.append(io.Combo.Input(f.name, options=list(limits["options"]), **common))
        elif f.type in (bool, "bool"):
            inputs.append(io.Boolean.Input(f.name, **common))
        elif f.type in (int, "int"):
            inputs.append(io.Int.Input(f.name, **limits, **common))
        elif f.type in (float, "float"):
            inputs.append(io.Float.Input(f.name, **limits, **common))
        else:
            inputs.append(io.String.Input(f.name, **common))
    return inputs


class QRLoRATrain(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRATrain",
            display_name="Train QR-LoRA",
            category=TRAINING_CATEGORY,
            description=(
                "Trains a QR-LoRA as the paper does: per layer the base weight's top-r SVD and QR give a frozen basis Q, "
                "and only ΔR (zero at the start) is learned, with the reference scripts' objective and defaults."
            ),
            is_input_list=True,
            hidden=[io.Hidden.unique_id],
            is_output_node=True,  # it writes checkpoints and shows the loss curve and samples
            inputs=[
                io.Model.Input("model", tooltip="The base model to train on (any model the stock loaders load)."),
                io.Latent.Input("latents", tooltip="Training images encoded with VAE Encode: one batch, or a list of images of different sizes."),
                io.Conditioning.Input("positive", tooltip="The caption with its trigger word: one for all images, or one per image."),
                *setting_inputs(),
                QRLoRAType.Input("qr_lora", optional=True, tooltip="An adapter to continue training (its own Q, ΔR, rank and layers)."),
                SampleSettingsType.Input("samples", optional=True, tooltip="Sample images every N steps (QR-LoRA Sample Settings)."),
            ],
            outputs=[
                QRLoRAType.Output(display_name="qr_lora", tooltip="The trained adapter (also saved in the loras folder)."),
                io.Model.Output(display_name="model", tooltip="The base model with the trained adapter applied."),
                LossMap.Output(display_name="loss_map", tooltip="Loss per step, for the stock Plot Loss Graph node."),
                io.Int.Output(display_name="steps", tooltip="Steps the adapter has been trained for in total."),
            ],
        )

    @classmethod
    def execute(cls, model, latents, positive, qr_lora=None, samples=None, **widgets) -> io.NodeOutput:
        config = TrainConfig(**{k: v[0] for k, v in widgets.items()})
        model, existing, samples = model[0], (qr_lora[0] if qr_lora else None), (samples[0] if samples else None)
        with torch.inference_mode(False):
            return cls._train(model, latents, positive, config, existing, samples)

    @classmethod
    def _train(cls, model, latents, positive, config: TrainConfig, existing, samples=None) -> io.NodeOutput:
        node_id, server = (cls.hidden.unique_id if cls.hidden else None), running_server()
        send = (lambda event, data: server.send_sync(event, {"node": node_id, **data})) if server is not None else (lambda event, data: None)
        first_step_done = None  # the page's time left counts from here: step 1 also loads and warms up

        def live_loss(step: int, loss: float) -> None:
            nonlocal first_step_done
            first_step_done = first_step_done or time.monotonic()
            send(LIVE_LOSS_EVENT, {"step": step, "steps": config.steps, "loss": loss, "seconds": time.monotonic() - first_step_done})

        try:
            run = train_to_files(model, latents, positive, config, existing, on_step=live_loss, samples=samples,
                                 on_samples=lambda step, made: send(SAMPLES_EVENT, {"step": step, "samples": made}))
        except Stopped as e:  # ComfyUI tells the page only that the run was interrupted; this says what was kept
            send(STOPPED_EVENT, {"step": e.step, "file": e.kept, "text": str(e)})
            raise
        losses, total, name, targets = run.losses, run.total, run.name, run.session.targets
        adapter = targets.to_adapter({**run.metadata, "steps": total, "loss": losses[-1]}, source=name)
        patched = model.clone()
        patched.add_patches(patches_for(adapter, resolve_targets(patched, adapter)[0]), 1.0)

        text = "\n".join([
            f"Trained {len(targets.layers)} layers ({targets.trainable_count():,} ΔR values) for {config.steps} steps: "
            f"loss {losses[0]:.4g} -> {losses[-1]:.4g}. Saved {name}.",
            *run.session.notes,
            describe_adapter(adapter),
        ])
        summary = {"file": name, "steps": total, "losses": losses, "layers": len(targets.layers), "trained_values": targets.trainable_count()}
        output = {"text": [text], "qrlora": [summary], "loss": losses}
        if run.previews is not None:
            output["qrlora_samples"] = run.previews.files
        return io.NodeOutput(adapter, patched, {"loss": losses}, total, ui=output)
