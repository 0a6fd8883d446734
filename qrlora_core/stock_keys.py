"""One layer of a QR-LoRA file, read the way ComfyUI's stock LoRA loader reads files.

`comfy.lora.load_lora` walks the model's LoRA key map and, for every
prefix `x` (a layer name such as `transformer.transformer_blocks.0.attn.to_q`),
asks each registered weight adapter whether the file's tensors hold a layer
under `x`. It passes only the tensors, never the file's metadata, so what
a layer needs must be in its own tensors:

- published: `x.lora.q.weight` (Q) and `x.lora.delta_r.weight` (ΔR);
  `x.lora.base_r.weight` (R) is read past. No alpha in the file: s = 1
  (or alpha / rank when a stock `x.alpha` tensor is present). The
  triangular variant of the reference keeps ΔR zero below the diagonal
  (its mask is applied at init and in every forward, so those entries
  never move), so ΔR is used as stored in both variants.
- native: `x.qr.q`, `x.qr.delta_r` or the packed `x.qr.delta_r_upper`, and
  `x.qr.scale` (s = alpha / rank as float64: the stock path sees tensors,
  never the file's metadata). A native layer without it is incomplete: refused.
- compact: native without Q. Q is in a shared basis file that only the
  file's metadata names, so the stock path cannot reach it: refused.
- Q-and-R (the reference's second script): `x.lora.up.weight` /
  `x.lora.down.weight`, whose update depends on the base weights
  (reference_formats.py). Read by Load QR-LoRA with a model; the stock
  path refuses it rather than counting the base's top-r part twice.
"""

import math
from dataclasses import dataclass

import torch

from .errors import AdapterError, clipped
from .formats import (FLOAT32_MAX, NATIVE_DELTA, NATIVE_DELTA_UPPER, NATIVE_FINGERPRINT, NATIVE_Q, NATIVE_SCALE, PUBLISHED_SUFFIXES,
                      Q_ROUNDING_CAP, all_finite, check_unit_columns, delta_bound, scale_tensor, unpack_upper)


@dataclass
class StockLayer:
    q: torch.Tensor
    delta_r: torch.Tensor
    scale: float
    keys: set  # every tensor of the file this layer accounts for


class Refused(Exception):
    """A layer the stock path recognises but must not load; the message says why and what to do."""


UNIT_COLUMNS = 1e-2  # a basis's columns have unit length, to the precision they are stored in (fp8: its eps, capped)


def _layer(q, delta_r, scale, keys) -> StockLayer:
    """Checked from the tensors alone, cheaply (this runs for every layer of every load): shapes that fit,
    finite values, Q's columns of unit length (a basis, or a stack of bases after a mix; a scaled or
    arbitrary Q is refused), and a delta that stays a number."""
    if q.dim() != 2 or delta_r.dim() != 2 or q.shape[1] != delta_r.shape[0] or q.shape[1] == 0 or not (q.is_floating_point() and delta_r.is_floating_point()):
        raise Refused(f"has Q of shape {clipped(tuple(q.shape))} ({q.dtype}) and ΔR of shape {clipped(tuple(delta_r.shape))} ({delta_r.dtype}), "
                      "which do not fit together; the file is damaged")
    if not (all_finite(q) and all_finite(delta_r)) or not math.isfinite(scale):
        raise Refused("contains NaN or infinite values; the adapter is broken, use another file")
    off = check_unit_columns(q)
    if not off <= min(max(UNIT_COLUMNS, torch.finfo(q.dtype).eps), Q_ROUNDING_CAP):
        raise Refused(f"has a Q whose columns are not of unit length (off by {off:.3g}), so it is not a QR-LoRA basis; the file is damaged or not a QR-LoRA")
    bound = delta_bound(q, delta_r, scale)
    if not bound < FLOAT32_MAX:
        raise Refused(f"has a delta s·Q·ΔR reaching {bound:.3g}, beyond any weight a model holds; the file is damaged")
    return StockLayer(q, delta_r, scale, keys)


def read_layer(x: str, lora: dict, alpha: float | None = None) -> StockLayer | None:
    """The QR-LoRA layer stored under prefix `x`, None if there is none, Refused if it must not load."""
    q_key = x + PUBLISHED_SUFFIXES["q"]
    if q_key in lora:
        delta_key = x + PUBLISHED_SUFFIXES["delta_r"]
        if delta_key not in lora:
            raise Refused(f"has Q but no ΔR ({delta_key}); the file is incomplete")
        q, delta_r = lora[q_key], lora[delta_key]
        keys = {q_key, delta_key} | ({x + PUBLISHED_SUFFIXES["base_r"]} & lora.keys())
        if alpha is not None and not 0 < alpha < math.inf:  # 0 would patch nothing, a negative alpha the inverse
            raise Refused(f"has an alpha ({x}.alpha) of {alpha}, which makes no scale (alpha / rank must be a positive finite number); the file is damaged")
        rank = q.shape[1] if q.dim() == 2 else 0
        scale = 1.0 if alpha is None or rank == 0 else alpha / rank  # rank 0 is refused by _layer
        return _layer(q, delta_r, scale, keys)

    full, upper = x + NATIVE_DELTA, x + NATIVE_DELTA_UPPER
    if full not in lora and upper not in lora:
        return None
    q_key, scale_key = x + NATIVE_Q, x + NATIVE_SCALE
    if q_key not in lora:
        raise Refused(
            "is a compact QR-LoRA layer (ΔR only): its Q is in a shared basis file that only the file's metadata names, "
            "which ComfyUI's LoRA loaders cannot read; load it with the Load QR-LoRA node, or save it again without 'compact'"
        )
    if scale_key not in lora:
        raise Refused(
            f"has no scale ({NATIVE_SCALE}), so its alpha is unknown; the file is incomplete: save the adapter again with Save QR-LoRA"
        )
    q = lora[q_key]
    try:
        delta_r = lora[full] if full in lora else unpack_upper(lora[upper], q.shape[1] if q.dim() == 2 else 0, x, "the file")
    except AdapterError as e:
        raise Refused(str(e).split(": ", 1)[-1]) from None
    keys = {q_key, scale_key, full if full in lora else upper} | ({x + NATIVE_FINGERPRINT} & lora.keys())
    scale = lora[scale_key]
    if scale.numel() != 1 or not scale.is_floating_point() or not all_finite(scale) or not scale.item() > 0:
        shown = scale.flatten()[:4].tolist()
        raise Refused(f"has a scale of {scale.numel()} values ({scale.dtype}, {shown}) that is not one positive finite number "
                      "(alpha / rank, both positive); the file is damaged")
    return _layer(q, delta_r, float(scale.item()), keys)


def state_dict(adapter) -> dict:
    """An adapter as the tensors a stock loader reads back into the same patches (for hooks: comfy.hooks.create_hook_lora)."""
    tensors = {}
    for name, t in adapter.targets.items():
        tensors[name + NATIVE_Q] = t.q
        tensors[name + NATIVE_DELTA] = t.delta_r
        tensors[name + NATIVE_SCALE] = scale_tensor(adapter.scale)
    return tensors
