"""The reference implementation's other files: its Q-and-R checkpoints, and its own layout as an export.

Q-and-R checkpoints (the reference's second training script; docs/method.md,
"The reference's Q-and-R checkpoints"):
it replaces W by W - s·Q0·R0, trains Q and R themselves, and saves them as
ordinary `.lora.up.weight` (Q_t) / `.lora.down.weight` (R_t) pairs; its
`to_out.0` layers come out as `...to_out.0.to_out.0`. The layer then
computes W - s·Q0·R0 + s·Q_t·R_t, so the true update is
s·Q_t·R_t - s·Q0·R0, where s·Q0·R0 is the top-r part of W (sign-free:
whatever signs a decomposition picks, the product is the same). A plain
LoRA loader adds s·Q_t·R_t alone and counts the top-r part twice. Here the
update becomes an exact stacked pair, q = [Q_t | Q0], ΔR = [s·R_t ; -R0]
at scale 1, built against the base weights of the model it is applied to.

The reference layout (export): per layer `q`, `base_r`, `delta_r` under
diffusers names, alpha = rank (s = 1), which its inference scripts read
next to the base model: they rebuild W_res = W - Q·R from W, so R must be
the base's R = Q^T·W (what the decomposition gives when Q spans the top-r
subspace); our s is folded into ΔR.
"""


import torch

from .adapter import QRLoRA, QRTarget
from .decompose import check_rank, decompose_many
from .errors import AdapterError, clipped
from .formats import DOUBLED_OUT, DOWN, FLOAT32_MAX, PUBLISHED_SUFFIXES, UP, all_finite


def q_and_r_pairs(tensors, source: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer name (as the key map spells it): (Q_t, R_t)}."""
    pairs = {}
    for key in tensors:
        if not key.endswith(UP):
            continue
        stem = key[: -len(UP)]
        if stem + DOWN not in tensors:
            raise AdapterError(f"{source}: layer {stem} has lora.up but no lora.down; the file is incomplete, download it again.")
        q, r = tensors[key], tensors[stem + DOWN]
        if q.dim() != 2 or r.dim() != 2 or q.shape[1] != r.shape[0]:
            raise AdapterError(f"{source}: layer {stem} has Q of shape {clipped(tuple(q.shape))} and R of shape {clipped(tuple(r.shape))}, which do not fit together; the file is damaged.")
        if not (all_finite(q) and all_finite(r)):
            raise AdapterError(f"{source}: layer {stem} contains NaN or infinite values; the checkpoint is broken, use another one.")
        bound = float(torch.linalg.matrix_norm(q.double()) * torch.linalg.matrix_norm(r.double()))  # bounds every entry of Q_t·R_t
        if not bound < FLOAT32_MAX:  # Q_t is trained, not orthonormal: check_delta's bound does not hold
            raise AdapterError(f"{source}: layer {stem}: its delta Q·R reaches {bound:.3g}, beyond any weight a model holds (float32 ends at 3.4e38); "
                               "the checkpoint is damaged or its values were made absurd, use another file.")
        name = stem[: -len(DOUBLED_OUT)] + ".to_out.0" if stem.endswith(DOUBLED_OUT) else stem
        pairs[name] = (q.to(torch.float32), r.to(torch.float32))
    return pairs


def resolve_q_and_r(tensors, base_weight, source: str, alpha: float | None = None) -> tuple[QRLoRA, list[str]]:
    """The file's exact update against the base weights; `base_weight(name)` gives W (m x n) or None.

    Returns the adapter (stacked pairs, scale 1) and the names the model lacks.
    """
    pairs = q_and_r_pairs(tensors, source)
    ranks = {q_t.shape[1] for q_t, _ in pairs.values()}
    if len(ranks) > 1:
        raise AdapterError(f"{source}: its layers have different ranks {sorted(ranks)}; a Q-and-R checkpoint has one rank, the file is damaged.")
    weights, missing = {}, []
    for name, (q_t, r_t) in pairs.items():
        weight = base_weight(name)
        if weight is None:
            missing.append(name)
        elif tuple(weight.shape) != (q_t.shape[0], r_t.shape[1]):
            raise AdapterError(
                f"{source} was trained on another base model: layer {name} is {(q_t.shape[0], r_t.shape[1])} in the file and "
                f"{tuple(weight.shape)} in this model; connect the model it was trained on."
            )
        else:
            weights[name] = weight
    if not weights:
        example = next(iter(pairs), "(none)")
        raise AdapterError(f"{source} matches none of this model's layers (its layers are named like '{example}'); connect the model it was trained on.")
    rank = ranks.pop()
    scale = 1.0 if alpha is None else alpha / rank
    check_rank({name: tuple(w.shape) for name, w in weights.items()}, rank, "the file is damaged.", source=source)
    tops = decompose_many(weights, rank)  # Q0·R0: the top-r part of each W (alpha = rank), batched by shape
    targets = {}
    for name, top in tops.items():
        q_t, r_t = pairs[name]
        q0, r0 = top.q.to(q_t.device), top.r.to(q_t.device)
        targets[name] = QRTarget(q=torch.cat([q_t, q0], dim=1), delta_r=torch.cat([scale * r_t, -r0], dim=0))
    adapter = QRLoRA(targets, rank=rank, alpha=float(rank), format="q_and_r", source=source, shared_basis=False,
                     metadata={"note": "the reference's Q-and-R checkpoint, resolved against the base model's top-r part"})
    return adapter, missing


def reference_tensors(adapter: QRLoRA, base_weight) -> tuple[dict, int]:
    """The reference layout of an adapter; `base_weight(name)` gives W. Also returns how many ΔR are not triangular."""
    if not adapter.shared_basis:
        raise AdapterError(
            f"{adapter.source or 'This mix'} sums deltas of different bases, and the reference's layout holds one basis per layer: "
            "export it as an ordinary LoRA instead (Export as LoRA)."
        )
    foreign = [n for n in adapter.targets if not n.startswith("transformer.")]
    if foreign:
        raise AdapterError(
            f"The reference's scripts are for Flux and SD3 (layer names under 'transformer.'); this adapter's layers are named like "
            f"'{foreign[0]}': export it as an ordinary LoRA instead."
        )
    tensors, not_triangular = {}, 0
    for name, t in adapter.targets.items():
        weight = base_weight(name)
        if weight is None or tuple(weight.shape) != (t.out_features, t.in_features):
            raise AdapterError(f"The connected model has no {t.out_features} x {t.in_features} layer {name}: connect the model this adapter was made for.")
        q = t.q.to(torch.float32)
        base_r = (q.double().T @ weight.to(torch.float64).reshape(weight.shape[0], -1)).to(torch.float32)
        delta_r = (t.delta_r.double() * adapter.scale).to(torch.float32)
        not_triangular += bool(torch.tril(delta_r, diagonal=-1).any())
        tensors[name + PUBLISHED_SUFFIXES["q"]] = q.contiguous()
        tensors[name + PUBLISHED_SUFFIXES["base_r"]] = base_r.contiguous()
        tensors[name + PUBLISHED_SUFFIXES["delta_r"]] = delta_r.contiguous()
    return tensors, not_triangular
