"""The registered weight adapter in-process: ComfyUI's own `comfy.lora.load_lora` on a Flux model
(fused qkv and linear1 slices) gives the very patches Apply to Model makes, and registering is idempotent."""

import torch

from integration.test_model_patcher import FLUX_TARGETS, block
from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.formats import save_native
from devkit import host, models


def test_stock_load_lora_gives_apply_s_patches_on_fused_flux_slices(tmp_path, rng):
    host.import_pack()
    import comfy.lora
    import comfy.utils
    from comfyui_qrlora.integration import weight_adapter
    from comfyui_qrlora.nodes.apply import QRLoRAApply

    # Registered as ComfyUI's load hook does, whatever imported the pack first in this process (the suite's whole run
    # once lacked it here: devkit.host now drives the entry point also inside a running event loop). The real load
    # path is test_ecosystem's, through the server.
    weight_adapter.register()

    model = models.patcher("flux")
    base = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    targets = {}
    for name, (key, start, length) in FLUX_TARGETS.items():
        b = decompose(block(base[key], start, length), 6)
        targets[name] = QRTarget(q=b.q, delta_r=torch.triu(torch.randn(6, b.r.shape[1], generator=rng)) * 0.05)
    adapter = QRLoRA(targets, rank=6, alpha=1.5, format="native")
    path = str(tmp_path / "flux.safetensors")
    save_native(adapter, path)

    stock = model.clone()
    stock.add_patches(comfy.lora.load_lora(comfy.utils.load_torch_file(path, safe_load=True), comfy.lora.model_lora_keys_unet(model.model, {})), 0.9)
    ours = QRLoRAApply.execute(model=model, qr_lora=adapter, strength=0.9).args[0]
    results = []
    for patched in (stock, ours):
        patched.patch_model()
        results.append({k: v.clone() for k, v in patched.model.diffusion_model.state_dict().items()})
        patched.unpatch_model()
    changed = {key for key, *_ in FLUX_TARGETS.values()}
    for key, w in base.items():
        assert torch.equal(results[0][key], results[1][key]), f"{key}: stock and Apply differ"
        assert torch.equal(results[0][key], w) == (key not in changed), key
    for name, (key, start, length) in FLUX_TARGETS.items():
        t = adapter.targets[name]
        want = block(base[key], start, length).double() + 0.9 * 0.25 * t.q.double() @ t.delta_r.double()
        assert torch.allclose(block(results[0][key], start, length).double(), want, atol=1e-6), name


def test_registering_twice_keeps_one_entry_and_it_is_apply_s_class():
    host.import_pack()
    import comfy.weight_adapter
    from comfyui_qrlora.integration import weight_adapter

    weight_adapter.register()
    weight_adapter.register()
    ours = [a for a in comfy.weight_adapter.adapters if getattr(a, "name", None) == "qrlora"]
    assert ours == [weight_adapter.QRLoRAPatch]
    assert comfy.weight_adapter.adapters[-1] is weight_adapter.QRLoRAPatch  # after LoRA's, so a refusal overrides its guess


def test_bypass_h_adds_the_same_delta_to_a_linear_layer_s_output(rng):
    """Newer ComfyUI's bypass mode adds h(x) to the layer's output instead of patching W."""
    host.import_pack()
    from comfyui_qrlora.integration.weight_adapter import QRLoRAPatch

    q, delta_r, x = torch.randn(12, 3, generator=rng), torch.randn(3, 7, generator=rng), torch.randn(2, 5, 7, generator=rng)
    patch = QRLoRAPatch(q, delta_r, 0.5)
    patch.multiplier = 0.8
    want = x.double() @ (0.4 * q.double() @ delta_r.double()).T
    assert torch.allclose(patch.h(x, None).double(), want, atol=1e-5)
