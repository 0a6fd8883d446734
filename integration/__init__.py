"""ComfyUI glue: how the pack meets ComfyUI's machinery, apart from the node classes.

weight_adapter (QR-LoRA as one of ComfyUI's weight adapters), keymap and
targets (where an adapter's layers land in a model), files (the loras and
qrlora_bases folders), reference (the reference's Q-and-R checkpoints),
summaries and routes (what the page asks), training/ (the engine behind
Train QR-LoRA and train.py).
"""


def register(drawn: dict) -> None:
    """What the pack adds to ComfyUI besides its nodes, done once when ComfyUI loads the pack.

    The routes (`drawn`: {web module: node class}, for GET /qrlora/page), and
    the weight adapter that lets the stock LoRA loaders read QR-LoRA files.
    The adapter goes LAST in ComfyUI's list: `comfy.lora.load_lora` asks
    every adapter in turn and the last one to claim a layer wins, so ours
    overrides the stock LoRA adapter on the reference's Q-and-R layers
    (whose `.lora.up.weight` keys it would otherwise load wrongly) and
    refuses them there (weight_adapter._Refusal).
    """
    from . import routes, weight_adapter  # here, not at import: train.py imports this package before ComfyUI's arguments are set

    routes.register(drawn)
    weight_adapter.register()
