"""The world's text encoder: a CLIP-L (ComfyUI's fixed SD1.5 layout) with weights computed from a formula.

CLIP-L has 123M parameters (246 MB in fp16), too big to ship, and no
weights can be downloaded, so setup writes it from this module. Every
value comes from numpy's PCG64 bit stream (whose output numpy keeps stable
across versions) turned into numbers by integer and float64 arithmetic
here, then rounded to fp16 by numpy: the file is the same bytes on every
machine and library version, so the encoder the base UNet was trained with
(on the GPU machine) and the one a user's ComfyUI loads are identical.

The weights are random but tame: token embeddings of unit scale, small
attention and MLP weights (so each token's output stays mostly its own
embedding plus its position), unit layer norms and zero biases. What the
words mean is learnt by the UNet, as it learns the world from scratch.
"""

import zlib

import numpy as np

SEED = 20251129
VOCAB, POSITIONS, WIDTH, LAYERS, MLP = 49408, 77, 768, 12, 3072
SCALES = {  # standard deviation of each weight kind (uniform distribution)
    "token_embedding": 1.0, "position_embedding": 0.5,
    "q_proj": 0.02, "k_proj": 0.02, "v_proj": 0.02, "out_proj": 0.02,
    "fc1": 0.02, "fc2": 0.01, "text_projection": 0.036,
}


def layout() -> dict:
    """name -> shape of every tensor in a CLIP-L text encoder file (the keys the stock CLIPLoader reads)."""
    out = {
        "text_model.embeddings.token_embedding.weight": (VOCAB, WIDTH),
        "text_model.embeddings.position_embedding.weight": (POSITIONS, WIDTH),
    }
    for i in range(LAYERS):
        p = f"text_model.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            out[p + norm + ".weight"] = out[p + norm + ".bias"] = (WIDTH,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"self_attn.{proj}.weight"] = (WIDTH, WIDTH)
            out[p + f"self_attn.{proj}.bias"] = (WIDTH,)
        out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = (MLP, WIDTH), (MLP,)
        out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = (WIDTH, MLP), (WIDTH,)
    out["text_model.final_layer_norm.weight"] = out["text_model.final_layer_norm.bias"] = (WIDTH,)
    out["text_projection.weight"] = (WIDTH, WIDTH)
    return out


def uniform(name: str, count: int, std: float) -> np.ndarray:
    """`count` values uniform on [-std·√3, std·√3) from the PCG64 stream of (SEED, crc32(name)), as float64.

    The top 24 bits of each 64-bit draw, k, give (k + 0.5) / 2^23 − 1 exactly
    in float64; one multiplication scales it. No library sampling routine is
    involved, so nothing can change with a numpy version.
    """
    bits = np.random.PCG64(np.random.SeedSequence([SEED, zlib.crc32(name.encode())])).random_raw(count)
    unit = ((bits >> np.uint64(40)).astype(np.float64) + 0.5) / float(1 << 23) - 1.0
    return unit * (std * np.sqrt(3.0))


def tensor(name: str, shape: tuple) -> np.ndarray:
    """One tensor of the file, as fp16."""
    kind = name.split(".")[-2]
    if name.endswith(".bias"):
        values = np.zeros(shape)
    elif "layer_norm" in kind:
        values = np.ones(shape)
    else:
        values = uniform(name, int(np.prod(shape)), SCALES[kind]).reshape(shape)
    return values.astype(np.float16)


def save(path: str) -> None:
    """Write the encoder as a safetensors file, atomically (about 246 MB, a few seconds)."""
    import os

    import safetensors.numpy

    tmp = path + ".part"
    safetensors.numpy.save_file({name: tensor(name, shape) for name, shape in layout().items()}, tmp)
    os.replace(tmp, path)
