"""Disentanglement as the paper measures it: per-layer cosine of two ΔRs.

Computed as the cosine of the two weight deltas Q_a ΔR_a and Q_b ΔR_b.
When both share Q (orthonormal), that equals the cosine of the flattened
ΔRs exactly; when they do not, it is still the honest overlap of what the
two adapters add to the layer. Needs only r x r products, never m x n.
"""

import torch

from .adapter import QRLoRA


def _inner(qa, da, qb, db) -> float:
    # <Qa Da, Qb Db>_F = trace(Da^T (Qa^T Qb) Db)
    return float(((qa.T.to(torch.float64) @ qb.to(torch.float64)) @ db.to(torch.float64) * da.to(torch.float64)).sum())


def delta_cosine(a: QRLoRA, b: QRLoRA) -> dict[str, float]:
    """name -> cosine similarity, for the layers both adapters have."""
    out = {}
    for name in a.targets.keys() & b.targets.keys():
        ta, tb = a.targets[name], b.targets[name]
        if (ta.out_features, ta.in_features) != (tb.out_features, tb.in_features):
            continue
        ab = _inner(ta.q, ta.delta_r, tb.q, tb.delta_r)
        aa = _inner(ta.q, ta.delta_r, ta.q, ta.delta_r)
        bb = _inner(tb.q, tb.delta_r, tb.q, tb.delta_r)
        out[name] = ab / (aa * bb) ** 0.5 if aa > 0 and bb > 0 else 0.0
    return dict(sorted(out.items()))
