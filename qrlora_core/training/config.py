"""Training settings: one dataclass whose fields are the node's inputs, tooltips and file metadata.

Defaults follow the reference training setup (docs/method.md, "Training
objective and defaults") where a single GPU allows: rank 64, alpha = rank
(s = 1), lr 1e-4 constant, AdamW with weight decay 1e-4, gradient
accumulation 4, clipping at norm 1.0, 1000 steps, the triangular ΔR, the
paper's attention + MLP targets, the reference objective and Flux guidance
1.0 while training.
"""

import math
from dataclasses import MISSING, dataclass, field, fields

from ..errors import AdapterError, require_encodable
from ..formats import PRECISIONS
from .objective import OBJECTIVES, REFERENCE
from .pattern import NamePattern, compile_pattern
from .roles import ALL, ROLES
from .step_loop import OPTIMIZERS

# The paper's targets on canonical adapter names, in both spellings:
# diffusers-style `transformer.transformer_blocks.0.attn.to_q` (Flux, SD3) and
# kohya-style `lora_unet_..._transformer_blocks_0_attn1_to_q` (SD1.5, SDXL,
# whose UNets number their attentions attn1 / attn2).
_ATTENTION = r"attn\d?[._](?:to_q|to_k|to_v|to_out[._]0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
_MLP = r"(?:ff|ff_context)[._]net[._](?:0[._]proj|2)"
TARGET_PRESETS = {
    "attention + MLP (paper)": rf"(?:^|[._])(?:{_ATTENTION}|{_MLP})$",
    "attention only": rf"(?:^|[._]){_ATTENTION}$",
    "custom pattern": None,
}
BASIS_PARTS = ("all", "first half", "second half")
TRAINING_DTYPES = ("bf16", "fp32")  # of PRECISIONS: fp16 trains unstably without loss scaling


def _help(text: str, record: bool = True, optional: bool = False, widget: dict | None = None, **limits) -> dict:
    """A field's tooltip, its widget's limits/options, whether the file's metadata records it,
    and whether the node offers it as an optional input (added after the first release, so
    earlier workflows, which lack it, still run with its default)."""
    return {"help": text, "record": record, "optional": optional, "widget": widget or {}, **limits}


@dataclass
class TrainConfig:
    # Fields added later go last: a saved workflow lists its widget values in field order.
    rank: int = field(default=64, metadata=_help(
        "Rank r of the frozen basis Q (m x r) and the trained ΔR (r x n) per layer; the reference uses 64. "
        "Layers smaller than the rank are left out (the node says which).", min=1, max=1024))
    alpha: float = field(default=0.0, metadata=_help(
        "Scale numerator: the delta is (alpha / rank) · Q · ΔR. 0 means alpha = rank (scale 1, as the reference).",
        min=0.0, max=4096.0, widget={"step": 0.5}))
    steps: int = field(default=1000, metadata=_help(
        "Optimizer steps to train (each sees batch size x gradient accumulation images); the reference trains 1000.", min=1, max=1_000_000))
    learning_rate: float = field(default=1e-4, metadata=_help(
        "Learning rate of the optimizer; the reference uses 1e-4 (constant).", min=1e-7, max=1.0, widget={"step": 1e-6}))
    batch_size: int = field(default=1, metadata=_help(
        "Images per forward pass, drawn at random from the latents; the reference uses 1.", min=1, max=1024))
    grad_accumulation: int = field(default=4, metadata=_help(
        "Forward passes whose gradients are averaged before each optimizer step; the reference uses 4.", min=1, max=1024))
    seed: int = field(default=0, metadata=_help(
        "Seed for the noise, timesteps and image order: the same seed and inputs train the same adapter.",
        min=0, max=0xFFFFFFFFFFFFFFFF, widget={"control_after_generate": False}))
    optimizer: str = field(default="AdamW", metadata=_help(
        "Optimizer for ΔR (constant learning rate); the reference uses AdamW.", options=tuple(OPTIMIZERS)))
    training_dtype: str = field(default="bf16", metadata=_help(
        "Precision of the model's forward and backward passes (ΔR itself is kept in fp32); the reference trains in bf16.",
        options=TRAINING_DTYPES))
    gradient_checkpointing: bool = field(default=True, metadata=_help(
        "Recompute activations block by block in the backward pass: much less memory, about a third more time.", record=False))
    target_preset: str = field(default="attention + MLP (paper)", metadata=_help(
        "Which layers get a QR-LoRA: the paper's attention + MLP projections, attention only, or the pattern below.", options=tuple(TARGET_PRESETS)))
    target_pattern: str = field(default="", metadata=_help(
        "With 'custom pattern': a regular expression searched in the layer names (e.g. 'attn1?[._]to_[qkv]$'; no back-references "
        "or look-arounds); "
        "names look like 'transformer.transformer_blocks.0.attn.to_q' (Flux, SD3) or "
        "'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q' (SD1.5, SDXL).", record=False))
    triangular: bool = field(default=True, metadata=_help(
        "Keep ΔR upper triangular (entries below the diagonal stay 0), the reference scripts' default; "
        "its files store only the upper part."))
    checkpoint_every: int = field(default=0, metadata=_help(
        "Save a checkpoint into the loras folder every N steps (0: only at the end, or when interrupted).", min=0, max=1_000_000, record=False))
    filename_prefix: str = field(default="qrlora/trained", metadata=_help(
        "Checkpoint names inside the loras folder: <prefix>_<run>_step<steps>.safetensors.", record=False))
    trigger_words: str = field(default="", metadata=_help(
        "The word(s) your captions use for the new concept or style (e.g. '<s> style'); stored in the file's metadata.", record=False))
    objective: str = field(default=REFERENCE, metadata=_help(
        "What the loss compares. Reference (the paper's scripts): the model's own prediction against its target "
        "(flow models: velocity noise - x0 at sigma uniform in (0, 1], Flux unshifted, SD3 shifted by 3 as diffusers' SD3 scripts; "
        "SD1.5/SDXL: noise or v at uniform timesteps), plain MSE. "
        "ComfyUI: its trainer's objective, the denoised x0 against x0 at sigmas of the model's (shifted) sampling schedule, "
        "which for flow models weights each step by sigma² and so trains mostly at high noise.",
        options=tuple(OBJECTIVES), optional=True))
    guidance: float = field(default=1.0, metadata=_help(
        "Flux's distilled guidance input while training; the reference trains at 1.0 (not the 3.5 used for sampling). "
        "0 keeps what the caption's conditioning carries. Models without a guidance input ignore it.",
        min=0.0, max=100.0, optional=True, widget={"step": 0.1}))
    weight_decay: float = field(default=1e-4, metadata=_help(
        "Weight decay of AdamW (decoupled; other optimizers: L2); the reference uses 1e-4.",
        min=0.0, max=1.0, optional=True, widget={"step": 1e-5}))
    max_grad_norm: float = field(default=1.0, metadata=_help(
        "Clip the gradient of all ΔRs together to this norm before each optimizer step (0: no clipping); the reference uses 1.0.",
        min=0.0, max=1e6, optional=True, widget={"step": 0.1}))
    model_on_gpu_gb: float = field(default=0.0, metadata=_help(
        "GiB of the model's weights kept on the GPU while training; the rest stays in host memory and is copied in "
        "block by block each step (less GPU memory, slower). 0: automatic, the whole model when it fits beside "
        "the training's own memory, otherwise as much as fits.",
        record=False, min=0.0, max=4096.0, optional=True, widget={"step": 0.5}))
    plain_lora: bool = field(default=False, metadata=_help(
        "Train an ordinary LoRA instead (up and down both learned, up from zero, down Kaiming-uniform; scale alpha / rank), "
        "for comparisons: it has no shared basis, so Merge ΔR sums its delta with the others'. On the toy world's held-out "
        "pairs two of them (role all, learning rate 1e-3) mixed more often than QR-LoRA's roles (docs/mixing.md).", optional=True))
    noise_min: float = field(default=0.0, metadata=_help(
        "Lowest noise level trained at, as a fraction of the schedule (0: clean). 0 to 1 trains at every level; a "
        "narrower range is an option to try (docs/mixing.md: content at 0.5-1 and style at 0-0.5 did not win the toy world's tuning).", min=0.0, max=1.0, optional=True, widget={"step": 0.05}))
    noise_max: float = field(default=1.0, metadata=_help(
        "Highest noise level trained at, as a fraction of the schedule (1: pure noise).", min=0.0, max=1.0, optional=True, widget={"step": 0.05}))
    ema_decay: float = field(default=0.0, metadata=_help(
        "Save the moving average of the trained values over the steps (this decay per step, e.g. 0.9) instead of their "
        "last values: steadier adapters where the learning rate makes training swing. 0: off.",
        min=0.0, max=0.9999, optional=True, widget={"step": 0.01}))
    role: str = field(default=ALL, metadata=_help(
        "What the adapter is for: content (a subject or shape), style, or all. The role picks the blocks trained for the "
        "model's architecture (SD1.5, SDXL, SD3, Flux; docs/roles.md), so that a content and a style adapter mix: "
        "all is the paper's choice, every block. The target preset picks the layers inside those blocks; "
        "a custom target pattern replaces the role's blocks.", options=ROLES, optional=True))
    basis_part: str = field(default="all", metadata=_help(
        "Which of the basis's r directions per layer the adapter trains: all (the paper), or one half of them. A content "
        "adapter on the first half and a style adapter on the second, at the same rank on the same model, add to "
        "orthogonal directions of each layer's output, so their Merge ΔR sum does not overwrite one with the other.",
        options=BASIS_PARTS, optional=True))

    def __post_init__(self):
        for f in fields(self):
            value = _as_type(f, getattr(self, f.name))
            setattr(self, f.name, value)
            if isinstance(value, float) and not math.isfinite(value):
                raise AdapterError(f"{f.name} is {value}, which is not a number training can use: enter a finite value (default {f.default:g}).")
        require_encodable(**{f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), str)})
        if self.basis_part not in BASIS_PARTS:
            raise AdapterError(f"'{self.basis_part}' is not a basis part; choose one of: {', '.join(BASIS_PARTS)}.")
        if self.basis_part != "all" and self.rank < 2:
            raise AdapterError(f"Rank {self.rank} has no half to train: set the rank to 2 or more, or the basis part to all.")
        if not 0.0 <= self.noise_min < self.noise_max <= 1.0:
            raise AdapterError(f"The noise range {self.noise_min:g} to {self.noise_max:g} is empty or outside 0 to 1: "
                               "set noise_min below noise_max (0 to 1 trains at every noise level).")

    @property
    def torch_dtype(self):
        """The dtype of the model's forward and backward passes."""
        return PRECISIONS[self.training_dtype]

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha) if self.alpha > 0 else float(self.rank)

    def trained_rows(self, rank: int) -> tuple[int, int] | None:
        """The rows of ΔR (directions of Q) trained at this rank, (start, stop); None: all of them."""
        half = rank // 2
        return {"all": None, "first half": (0, half), "second half": (half, rank)}[self.basis_part]

    @property
    def role_picks_blocks(self) -> bool:
        """Whether the role narrows the targets to its blocks: any role but all, unless a custom pattern names the layers."""
        return self.role != ALL and TARGET_PRESETS.get(self.target_preset) is not None

    def target_matcher(self) -> NamePattern:
        """The targets as a pattern matched in linear time (training/pattern.py): a crafted one cannot freeze the server."""
        pattern = TARGET_PRESETS.get(self.target_preset, MISSING)
        if pattern is MISSING:
            raise AdapterError(f"'{self.target_preset}' is not a target preset; choose one of: {', '.join(TARGET_PRESETS)}.")
        if pattern is None:
            pattern = self.target_pattern.strip()
            if not pattern:
                raise AdapterError("The target preset is 'custom pattern' but the pattern is empty: enter a regular expression for the layer names.")
        return compile_pattern(pattern)

    def recorded(self) -> dict:
        """The settings an adapter file keeps in its metadata (what trained it, not where it was saved)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["record"]}


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _as_type(f, value):
    """A setting as its field's type: /prompt may send any JSON ("10" for steps, 3 for a float), and a value of
    another type would fail later in the run with an exception instead of this sentence."""
    kind = _TYPES[f.type] if isinstance(f.type, str) else f.type
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value) < 20:
        return int(value)
    if kind is float and isinstance(value, str) and len(value) < 40:
        try:
            return float(value)
        except ValueError:
            pass
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise AdapterError(f"{f.name} is {shown} ({type(value).__name__}), not {'an' if kind is int else 'a'} {kind.__name__}: enter a value like {f.default!r}.")


def help_text(name: str) -> str:
    """The tooltip of a TrainConfig field."""
    return _field(name).metadata["help"]


def limits(name: str) -> dict:
    """min / max / options of a field, for the node's widget."""
    return {k: v for k, v in _field(name).metadata.items() if k not in ("help", "record", "optional", "widget")}


def default(name: str):
    return _field(name).default


def _field(name: str):
    for f in fields(TrainConfig):
        if f.name == name:
            return f
    raise KeyError(name)
