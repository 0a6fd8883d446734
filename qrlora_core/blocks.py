"""Block weights: one weight per transformer / UNet block, scaling that block's ΔR.

Scaling ΔR by w scales the layer's delta s·Q·ΔR by w exactly, so a
block-weighted adapter applies and merges like any other (a weight per
block for each adapter before Merge ΔR).

Blocks, named as LoRA Block Weight (the Inspire pack) names them:
- SD1.x / SDXL UNets (kohya names `lora_unet_...`): IN00-IN11 (ComfyUI's
  input_blocks.N), MID, OUT00-OUT11 (output_blocks.N).
- Flux / SD3 (`transformer....`): D0, D1, ... (transformer_blocks.N: Flux's
  double-stream blocks, SD3's joint blocks) and S0, S1, ... (Flux's
  single_transformer_blocks.N).
Layers outside every block (embedders, final layers) have no block.

Syntax (case does not matter; entries apart by commas, semicolons or new
lines; later entries win):
- `NAME=w` for a block (`OUT01=0`), a range (`IN04-IN08=0.5`, `D0-9=1`),
  a group (`IN`, `MID`, `OUT`, `D`, `S`), the first or second half of the
  adapter's blocks in model order (`EARLY`, `LATE`), or every layer,
  outside blocks included (`*` or `ALL`). Unnamed blocks keep weight 1.
- A list of numbers, in LoRA Block Weight's order, with or without its
  `PRESET:` label: 17 (SD1.x: BASE, IN01, IN02, IN04, IN05, IN07, IN08,
  MID, OUT03-OUT11), 26 (SD1.x: BASE, IN00-IN11, MID, OUT00-OUT11), 12
  (SDXL: BASE, IN04, IN05, IN07, IN08, MID, OUT00-OUT05) or 20 (SDXL: BASE,
  IN00-IN08, MID, OUT00-OUT08) values; for Flux / SD3: BASE, then D0.. and
  S0.. up to the adapter's last block. BASE is the text encoder's weight,
  which a diffusion-model adapter does not touch: it is read and ignored.
"""

import re

from .adapter import QRLoRA, QRTarget
from .errors import AdapterError, require_encodable
from .formats import all_finite

# Block numbers have at most 4 digits (Flux has 57 blocks): a longer one names no block, and never reaches int(),
# which refuses numbers of more than 4,300 digits with an exception instead of a sentence.
_UNET = re.compile(r"^lora_unet_(down_blocks|up_blocks)_(\d{1,4})_(attentions|resnets|downsamplers|upsamplers)_(\d{1,4})_")
_DIT = re.compile(r"^transformer\.(transformer_blocks|single_transformer_blocks)\.(\d{1,4})\.")
_ID = re.compile(r"^(IN|OUT|D|S)(\d{1,4})$")

MAX_SPEC = 8_000  # characters: a Flux vector of 58 numbers, each as long as Python writes one, takes about 1,200

LBW_ORDERS = {  # length of a LoRA Block Weight vector -> its blocks after BASE
    17: ["IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02}" for i in range(3, 12)],
    26: [f"IN{i:02}" for i in range(12)] + ["MID"] + [f"OUT{i:02}" for i in range(12)],
    12: ["IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02}" for i in range(6)],
    20: [f"IN{i:02}" for i in range(9)] + ["MID"] + [f"OUT{i:02}" for i in range(9)],
}

BLOCK_PRESETS = {  # name -> spec; shown on the node, editable in its text box
    "all blocks": "*=1",
    "early half only (content)": "EARLY=1, LATE=0",
    "late half only (style)": "EARLY=0, LATE=1",
    "UNet: input blocks only": "IN=1, MID=0, OUT=0",
    "UNet: middle block only": "IN=0, MID=1, OUT=0",
    "UNet: output blocks only": "IN=0, MID=0, OUT=1",
    "SDXL B-LoRA content (OUT00)": "*=0, OUT00=1",
    "SDXL B-LoRA style (OUT01)": "*=0, OUT01=1",
    "Flux: double blocks only": "D=1, S=0",
    "Flux: single blocks only": "D=0, S=1",
}


def _unet_levels(names) -> int:
    """Blocks per UNet level (layers per block + 1), read from the attention / resnet indices the adapter has."""
    per_level = 0
    for name in names:
        m = _UNET.match(name)
        if m and m.group(3) in ("attentions", "resnets"):
            j = int(m.group(4))
            per_level = max(per_level, j + 2 if m.group(1) == "down_blocks" else j + 1)
    return per_level or 3  # SD1.x and SDXL: two layers per block


def block_of(name: str, per_level: int = 3) -> str | None:
    """The block a layer belongs to ('IN04', 'MID', 'OUT01', 'D3', 'S12'), or None outside every block."""
    if m := _DIT.match(name):
        return ("D" if m.group(1) == "transformer_blocks" else "S") + m.group(2)
    if name.startswith("lora_unet_mid_block_"):
        return "MID"
    if m := _UNET.match(name):
        level, kind, j = int(m.group(2)), m.group(3), int(m.group(4))
        if m.group(1) == "down_blocks":
            return f"IN{level * per_level + (per_level if kind == 'downsamplers' else j + 1):02}"
        return f"OUT{level * per_level + (per_level - 1 if kind == 'upsamplers' else j):02}"
    return None


def block_map(names) -> dict[str, str | None]:
    """{layer name: block} for layer names (an adapter's, or a model's trainable layers)."""
    per_level = _unet_levels(names)
    return {name: block_of(name, per_level) for name in names}


def _order_key(block: str):
    m = _ID.match(block)
    if block == "MID":
        return (1, 0)
    return ({"IN": 0, "OUT": 2, "D": 0, "S": 1}[m.group(1)], int(m.group(2)))


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AdapterError(f"Block weights: '{text}' in '{spec}' is not a number; write entries like OUT01=0.5 (see docs/blocks.md in the pack).") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise AdapterError(f"Block weights: '{text}' in '{spec}' is not a finite number.")
    return value


def _matches(key: str, block: str | None, ordered: list[str], spec: str) -> bool:
    if key in ("*", "ALL"):
        return True
    if block is None:
        return False
    if key in ("EARLY", "LATE"):
        half = (len(ordered) + 1) // 2
        return (block in ordered[:half]) == (key == "EARLY")
    if key in ("IN", "OUT", "D", "S", "MID"):
        return block == "MID" if key == "MID" else bool(_ID.match(block)) and _ID.match(block).group(1) == key
    if "-" in key:
        first, last = key.split("-", 1)
        a = _ID.match(first)
        b = _ID.match(last) or _ID.match(a.group(1) + last) if a else None
        if not a or not b or a.group(1) != b.group(1):
            raise AdapterError(f"Block weights: '{key}' in '{spec}' is not a range of one kind of block (write IN04-IN08 or D0-9).")
        m = _ID.match(block)
        return bool(m) and m.group(1) == a.group(1) and int(a.group(2)) <= int(m.group(2)) <= int(b.group(2))
    if not (_ID.match(key) or key == "MID"):
        raise AdapterError(f"Block weights: '{key}' in '{spec}' names no block; use IN00-IN11, MID, OUT00-OUT11, D<n>, S<n>, IN, OUT, D, S, EARLY, LATE or *.")
    m, n = _ID.match(key), _ID.match(block)
    return bool(m and n) and m.group(1) == n.group(1) and int(m.group(2)) == int(n.group(2))


def _vector_entries(values: list[float], ordered: list[str], adapter_blocks: set, spec: str) -> list[tuple[str, float]]:
    dit = any(b[0] in "DS" for b in adapter_blocks if b != "MID")
    if dit:
        last = {k: max((int(b[1:]) for b in adapter_blocks if b[0] == k), default=-1) for k in "DS"}
        names = [f"D{i}" for i in range(last["D"] + 1)] + [f"S{i}" for i in range(last["S"] + 1)]
    else:
        names = LBW_ORDERS.get(len(values))
    if names is None or len(names) != len(values) - 1:
        want = f"{len(names) + 1} (BASE, {names[0]} ... {names[-1]})" if dit and names else "17 or 26 (SD1.x), 12 or 20 (SDXL)"
        raise AdapterError(f"Block weights: '{spec}' has {len(values)} numbers; this adapter takes {want}.")
    return list(zip(names, values[1:]))


def layer_weights(spec: str, names) -> dict[str, float]:
    """{layer name: weight} for layer names; EARLY / LATE and a vector's length count the blocks these names have."""
    layer_blocks, by_block, _ = _weights(spec, names)
    return {name: by_block[block] for name, block in layer_blocks.items()}


def _weights(spec: str, names) -> tuple[dict, dict[str | None, float], dict[str, float]]:
    """({layer name: block}, {block: weight}, the spec's entries {key: weight} in the order they apply: a repeated key
    where it last appears)."""
    require_encodable(block_weights=spec)  # stored in the file's metadata
    if len(spec) > MAX_SPEC:
        raise AdapterError(f"Block weights: the text is {len(spec):,} characters, more than the {MAX_SPEC:,} any spec needs; "
                           "write one entry per block, range or group (see docs/blocks.md in the pack).")
    layer_blocks = block_map(names)
    present = {b for b in layer_blocks.values() if b is not None}
    ordered = sorted(present, key=_order_key)
    text = spec.strip()
    if re.match(r"^[A-Za-z][\w.+-]*:", text) and "=" not in text:  # a LoRA Block Weight preset line, NAME:1,0,...
        text = text.split(":", 1)[1]
    items = [i.strip() for i in re.split(r"[,;\n]", text) if i.strip()]
    if items and all("=" not in i for i in items):
        entries = dict(_vector_entries([_number(i, spec) for i in items], ordered, present, spec))
    else:
        entries = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise AdapterError(f"Block weights: '{item}' in '{spec}' has no '='; write entries like OUT01=0.5, or a list of numbers only.")
            key = key.strip().upper()
            entries.pop(key, None)  # later entries win: a repeated key moves to where it last appears
            entries[key] = _number(value.strip(), spec)
    by_block = {}  # the work is entries x blocks, however many layers share a block
    for block in dict.fromkeys(layer_blocks.values()):
        weight = 1.0
        for key, value in entries.items():
            if _matches(key, block, ordered, spec):
                weight = value
        by_block[block] = weight
    return layer_blocks, by_block, entries


def apply_block_weights(adapter: QRLoRA, spec: str) -> tuple[QRLoRA, dict[str, float]]:
    """A copy of the adapter with each layer's ΔR scaled by its block's weight; also {block: weight} used."""
    layer_blocks, by_block, entries = _weights(spec, adapter.targets)
    weights = {name: by_block[block] for name, block in layer_blocks.items()}
    targets = {
        name: t if weights[name] == 1.0 else QRTarget(q=t.q, delta_r=t.delta_r * weights[name], fingerprint=t.fingerprint)
        for name, t in adapter.targets.items()
    }
    for name, t in targets.items():
        if not all_finite(t.delta_r):
            raise AdapterError(f"Block weights: the weight {weights[name]:g} of {layer_blocks[name] or name} "
                               f"makes layer {name}'s ΔR infinite; use weights a trained adapter can take (between -4 and 4 are plenty).")
    used = {block or "other": weight for block, weight in by_block.items()}
    metadata = {**adapter.metadata, "block_weights": ", ".join(f"{key}={value!r}" for key, value in entries.items())}
    out = QRLoRA(targets, rank=adapter.rank, alpha=adapter.alpha, format=adapter.format, metadata=metadata,
                 source=adapter.source, shared_basis=adapter.shared_basis)
    return out, dict(sorted(used.items(), key=lambda kv: _order_key(kv[0]) if kv[0] != "other" else (3, 0)))


def block_overlap(cosines: dict[str, float]) -> dict[str, float]:
    """Mean |cos| of two adapters' ΔR per block (ΔR Similarity's per-layer numbers, gathered by block)."""
    per_level = _unet_levels(cosines)
    sums: dict[str, list[float]] = {}
    for name, c in cosines.items():
        sums.setdefault(block_of(name, per_level) or "other", []).append(abs(c))
    means = {b: sum(v) / len(v) for b, v in sums.items()}
    return dict(sorted(means.items(), key=lambda kv: _order_key(kv[0]) if kv[0] != "other" else (3, 0)))


def overlap_spec(means: dict[str, float], threshold: float) -> str:
    """Block weights that leave out the blocks where two adapters overlap (mean |cos| above threshold): for one of the two."""
    return ", ".join(f"{b}=0" for b, m in means.items() if b != "other" and m > threshold)
