"""Section 4: file sizes of one adapter for every FLUX.1-dev target at the bench's rank.

ΔR is upper triangular (the published scripts' default variant), float32
like the rest unless a row says bf16:
- native: Q + packed ΔR + fingerprint per target (qrlora_core.formats.save_native);
- compact: packed ΔR + fingerprint, Q from the shared basis file (save_native(basis_id=...));
- published: the reference layout, Q + R + full ΔR (what their checkpoints hold);
- lora: the same delta as a plain LoRA, up = s·Q, down = ΔR (formats.export_lora).
"""

import os
import tempfile

import safetensors.torch
import torch


def run(ctx) -> dict:
    adapter_mod, formats = ctx.core("adapter"), ctx.core("formats")
    rank, shapes = ctx.rank, ctx.size.targets()
    generator = torch.Generator().manual_seed(5)
    targets = {}
    for name, (m, n) in shapes.items():
        q = torch.randn(m, rank, generator=generator)
        targets[name] = adapter_mod.QRTarget(
            q=q, delta_r=torch.triu(torch.randn(rank, n, generator=generator)), fingerprint=torch.randn(16, generator=generator)
        )
    adapter = adapter_mod.QRLoRA(targets, rank=rank, alpha=float(rank), format="native", source="bench")
    folder = tempfile.mkdtemp(prefix="qrlora-files-", dir=ctx.scratch)
    paths = {k: os.path.join(folder, k + ".safetensors") for k in ("native", "compact", "published", "lora", "compact_bf16", "lora_bf16")}
    formats.save_native(adapter, paths["native"])
    formats.save_native(adapter, paths["compact"], basis_id=f"r{rank}-bench")
    formats.save_native(adapter, paths["compact_bf16"], basis_id=f"r{rank}-bench", dtype=torch.bfloat16)
    published = {}
    for name, t in targets.items():
        published[f"{name}.lora.q.weight"] = t.q
        published[f"{name}.lora.base_r.weight"] = torch.triu(torch.randn(rank, t.in_features, generator=generator))
        published[f"{name}.lora.delta_r.weight"] = t.delta_r
    safetensors.torch.save_file(published, paths["published"])
    del published
    formats.export_lora(adapter, paths["lora"])
    formats.export_lora(adapter, paths["lora_bf16"], dtype=torch.bfloat16)
    sizes = {k: os.path.getsize(p) for k, p in paths.items()}
    for p in paths.values():
        os.unlink(p)
    os.rmdir(folder)
    ctx.log(f"files (MB): " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sizes.items()))
    return {"bytes": sizes, "targets": len(targets), "rank": rank}
