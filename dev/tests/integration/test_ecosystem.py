"""QR-LoRA files in ComfyUI's LoRA ecosystem, through the real server.

Stock loaders read published and native files into exactly the patch
Apply to Model makes; adapters become hooks whose keyframes change the
strength between steps; block weights change exactly the blocks they
name; every written file carries modelspec metadata; the reference's
Q-and-R checkpoints load with their true update, and the reference layout
exported here reloads to the same weights. Expected weights are computed
here in float64 from the base file and the adapter tensors.
"""

import os
import uuid

import pytest
import safetensors
import safetensors.torch
import torch

from integration.conftest import SD3, SD15
from integration.test_inference import SD3_TARGETS, SD15_TARGETS, assert_only_targets_changed, rows
from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.formats import save_native
from support.adapters import write_published
from support.checks import saved_model
from devkit.graph import Graph
from support import seeds

pytestmark = pytest.mark.server

RANK = 8
MODELSPEC = ("modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation", "modelspec.title")


def seeded(label: str) -> torch.Generator:
    return seeds.generator("test_ecosystem:" + label)


@pytest.fixture(scope="module")
def sd3_files(comfy, base_models):
    """A published file (s = 1) and a native one (alpha = rank / 2, triangular ΔR stored packed) for the tiny SD3."""
    g = seeded("sd3_files")
    base = base_models["sd3"]
    bases = {name: decompose(rows(base[key], block), RANK) for name, (key, block) in SD3_TARGETS.items()}
    os.makedirs(comfy.path("models", "loras", "eco"), exist_ok=True)
    published = write_published(comfy.path("models", "loras", "eco", "published.safetensors"), bases, g)
    targets = {n: QRTarget(q=b.q, delta_r=torch.triu(torch.randn(RANK, b.r.shape[1], generator=g) * 0.05)) for n, b in bases.items()}
    native = QRLoRA(targets, rank=RANK, alpha=RANK / 2, format="native", metadata={"trigger_words": "<c> dog"})
    save_native(native, comfy.path("models", "loras", "eco", "native.safetensors"))
    published_adapter = QRLoRA(
        {n: QRTarget(q=published[f"{n}.lora.q.weight"], delta_r=published[f"{n}.lora.delta_r.weight"]) for n in bases},
        rank=RANK, alpha=float(RANK), format="published",
    )
    return {"eco/published.safetensors": published_adapter, "eco/native.safetensors": native}


def expected_sd3(base, adapter, strength):
    out = {}
    for name, (key, block) in SD3_TARGETS.items():
        w = out.setdefault(key, base[key].double().clone())
        t = adapter.targets[name]
        rows(w, block).add_(strength * adapter.scale * t.q.double() @ t.delta_r.double())
    return out


def run_saving(client, build):
    """Run a graph whose last step is ModelSave of `build(g, unet)`; return the file's prefix and the history entry."""
    prefix = f"checks/{uuid.uuid4().hex[:8]}"
    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD3, weight_dtype="default")
    g.add("ModelSave", model=build(g, unet), filename_prefix=prefix)
    return prefix, client.run(g.prompt())


@pytest.mark.parametrize("name", ["eco/published.safetensors", "eco/native.safetensors"])
def test_stock_lora_loader_equals_apply_bit_for_bit_and_the_float64_sum(comfy, client, base_models, sd3_files, name):
    strength = 0.6
    stock, _ = run_saving(client, lambda g, unet: g.add("LoraLoaderModelOnly", model=unet, lora_name=name, strength_model=strength))
    ours, _ = run_saving(client, lambda g, unet: g.add("QRLoRAApply", model=unet, qr_lora=g.add("QRLoRALoader", lora_name=name)[0], strength=strength))
    stock_weights, our_weights = saved_model(comfy, stock), saved_model(comfy, ours)
    assert stock_weights.keys() == our_weights.keys()
    for key in stock_weights:
        assert torch.equal(stock_weights[key], our_weights[key]), f"{key}: the stock loader and Apply to Model differ"
    assert_only_targets_changed(base_models["sd3"], stock_weights, expected_sd3(base_models["sd3"], sd3_files[name], strength))


def test_compact_file_through_the_stock_loader_is_refused_in_the_log_and_changes_nothing(comfy, client, base_models, sd3_files):
    g = Graph()
    save = g.add("QRLoRASave", qr_lora=g.add("QRLoRALoader", lora_name="eco/native.safetensors")[0], filename_prefix="eco/compact", compact=True, dtype="fp32")
    compact = client.ui(client.run(g.prompt()), save.node_id)["files"][0]
    offset = comfy.log_size()
    prefix, _ = run_saving(client, lambda g, unet: g.add("LoraLoaderModelOnly", model=unet, lora_name=compact, strength_model=1.0))
    assert "compact QR-LoRA layer" in comfy.log_tail(offset)
    saved = saved_model(comfy, prefix)
    assert all(torch.equal(saved[k], w) for k, w in base_models["sd3"].items())


def test_trigger_words_output_and_modelspec_in_saved_and_exported_files(comfy, client, sd3_files):
    g = Graph()
    a = g.add("QRLoRALoader", lora_name="eco/native.safetensors")
    b = g.add("QRLoRALoader", lora_name="eco/published.safetensors")
    shown = g.add("PreviewAny", source=a[2])
    mix = g.add("QRLoRAMerge", qr_lora_1=a[0], weight_1=1.0, qr_lora_2=b[0], weight_2=0.5)
    saved = g.add("QRLoRASave", qr_lora=mix[0], filename_prefix="eco/mix", compact=False, dtype="fp32")
    exported = g.add("QRLoRAExportLoRA", qr_lora=mix[0], filename_prefix="eco/mix_lora", dtype="fp32")
    entry = client.run(g.prompt())
    assert client.ui(entry, shown.node_id)["text"][0] == "<c> dog"
    for node in (saved, exported):
        name = client.ui(entry, node.node_id)["files"][0]
        with safetensors.safe_open(comfy.path("models", "loras", name), "pt") as f:
            meta = f.metadata()
        assert all(meta.get(k) for k in MODELSPEC), meta
        assert meta["modelspec.architecture"].startswith("stable-diffusion-v3-medium/")
        assert meta["modelspec.title"] == os.path.splitext(os.path.basename(name))[0]
        assert meta["modelspec.trigger_phrase"] == "<c> dog"
        assert meta["modelspec.merged_from"] == "eco/native.safetensors, eco/published.safetensors"


# ------------------------------------------------------------ the reference's other files


def write_q_and_r(path, base, g):
    """The Q-and-R script's checkpoint: trained Q_t, R_t from Q0, R0, its to_out.0 doubled in the names."""
    tensors, pairs = {}, {}
    for name, (key, block) in SD3_TARGETS.items():
        b = decompose(rows(base[key], block), RANK)
        q_t = b.q + torch.randn(b.q.shape, generator=g) * 0.02
        r_t = b.r + torch.randn(b.r.shape, generator=g) * 0.02
        stem = name + ".to_out.0" if name.endswith(".to_out.0") else name
        tensors[f"{stem}.lora.up.weight"], tensors[f"{stem}.lora.down.weight"] = q_t, r_t
        pairs[name] = (q_t, r_t)
    safetensors.torch.save_file(tensors, path)
    return pairs


def test_q_and_r_checkpoint_loads_with_its_true_update(comfy, client, base_models, rng):
    base = base_models["sd3"]
    pairs = write_q_and_r(comfy.path("models", "loras", "eco", "q_and_r.safetensors"), base, rng)
    name, strength = "eco/q_and_r.safetensors", 0.8

    prefix, _ = run_saving(client, lambda g, unet: g.add(
        "QRLoRAApply", model=unet, qr_lora=g.add("QRLoRALoader", lora_name=name, model=unet)[0], strength=strength))
    expected = {}
    for target, (key, block) in SD3_TARGETS.items():
        w = expected.setdefault(key, base[key].double().clone())
        u, s, vh = torch.linalg.svd(rows(base[key], block).double(), full_matrices=False)
        top = u[:, :RANK] @ torch.diag(s[:RANK]) @ vh[:RANK]  # the base's top-r part: no sign ambiguity
        q_t, r_t = pairs[target]
        rows(w, block).add_(strength * (q_t.double() @ r_t.double() - top))
    assert_only_targets_changed(base, saved_model(comfy, prefix), expected)

    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD3, weight_dtype="default")
    g.add("ModelSave", model=g.add("QRLoRAApply", model=unet, qr_lora=g.add("QRLoRALoader", lora_name=name)[0], strength=1.0), filename_prefix="checks/never")
    assert "needs the base model: connect the model" in client.run_expecting_error(g.prompt())["exception_message"]

    offset = comfy.log_size()
    stock, _ = run_saving(client, lambda g, unet: g.add("LoraLoaderModelOnly", model=unet, lora_name=name, strength_model=1.0))
    assert "Q-and-R checkpoint" in comfy.log_tail(offset)
    saved = saved_model(comfy, stock)
    assert all(torch.equal(saved[k], w) for k, w in base.items()), "the stock loader must not apply a Q-and-R file half right"


def test_reference_layout_export_reloads_to_the_same_weights(comfy, client, base_models, sd3_files):
    source, strength = "eco/native.safetensors", 0.7
    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD3, weight_dtype="default")
    export = g.add("QRLoRAExportReference", model=unet, qr_lora=g.add("QRLoRALoader", lora_name=source)[0], filename_prefix="eco/reference")
    exported = client.ui(client.run(g.prompt()), export.node_id)["files"][0]

    tensors = safetensors.torch.load_file(comfy.path("models", "loras", exported))
    with safetensors.safe_open(comfy.path("models", "loras", exported), "pt") as f:
        assert all(f.metadata().get(k) for k in MODELSPEC)
    native = sd3_files[source]
    for name, (key, block) in SD3_TARGETS.items():
        w = rows(base_models["sd3"][key], block).double()
        q, base_r = tensors[f"{name}.lora.q.weight"].double(), tensors[f"{name}.lora.base_r.weight"].double()
        assert torch.allclose(base_r, q.T @ w, atol=1e-5), name  # the reference's scripts rebuild W_res = W - Q R from it
        assert torch.allclose(q @ base_r, decompose(w, RANK).q.double() @ decompose(w, RANK).r.double(), atol=1e-4)  # = the top-r part
        assert torch.equal(tensors[f"{name}.lora.delta_r.weight"], native.targets[name].delta_r * native.scale)  # s folded in, alpha = rank

    again, _ = run_saving(client, lambda g, unet: g.add("QRLoRAApply", model=unet, qr_lora=g.add("QRLoRALoader", lora_name=exported)[0], strength=strength))
    first, _ = run_saving(client, lambda g, unet: g.add("QRLoRAApply", model=unet, qr_lora=g.add("QRLoRALoader", lora_name=source)[0], strength=strength))
    a, b = saved_model(comfy, first), saved_model(comfy, again)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-7), key


# ------------------------------------------------------------ block weights and hooks (SD1.5)


@pytest.fixture(scope="module")
def sd15_content(comfy, base_models):
    g = seeded("sd15_content")
    base = base_models["sd15"]
    targets = {}
    for name, key in SD15_TARGETS.items():
        b = decompose(base[key], 4)
        targets[name] = QRTarget(q=b.q, delta_r=torch.randn(4, b.r.shape[1], generator=g) * 0.05)
    adapter = QRLoRA(targets, rank=4, alpha=4.0, format="native", metadata={"trigger_words": "<c>"})
    os.makedirs(comfy.path("models", "loras", "eco"), exist_ok=True)
    save_native(adapter, comfy.path("models", "loras", "eco", "sd15_content.safetensors"))
    return adapter


def test_block_weights_change_exactly_the_blocks_they_name(comfy, client, base_models, sd15_content):
    # The tiny SD1.5 has one level with one layer per block: IN01 (input_blocks.1), MID, OUT01 (output_blocks.1).
    blocks = {"lora_unet_down_blocks_0_attentions_0_proj_in": "IN01", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": "IN01",
              "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k": "MID", "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_2": "OUT01"}
    weights = {"IN01": 0.0, "MID": 1.0, "OUT01": 2.5}
    prefix = f"checks/{uuid.uuid4().hex[:8]}"
    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD15, weight_dtype="default")
    weighted = g.add("QRLoRABlockWeights", qr_lora=g.add("QRLoRALoader", lora_name="eco/sd15_content.safetensors")[0],
                     preset="all blocks", block_weights="IN=0, OUT01=2.5")
    g.add("ModelSave", model=g.add("QRLoRAApply", model=unet, qr_lora=weighted[0], strength=1.0), filename_prefix=prefix)
    entry = client.run(g.prompt())
    assert "IN01 0, MID 1, OUT01 2.5" in client.ui(entry, weighted.node_id)["text"][0]
    base = base_models["sd15"]
    expected = {}
    for name, key in SD15_TARGETS.items():
        w = weights[blocks[name]]
        if w:
            t = sd15_content.targets[name]
            expected[key] = base[key].double() + (w * t.q.double() @ t.delta_r.double()).reshape(base[key].shape)
    assert_only_targets_changed(base, saved_model(comfy, prefix), expected)  # IN01's layers stay bit-identical


def test_similarity_overlap_feeds_block_weights(comfy, client, base_models, sd15_content, rng):
    """A style adapter that repeats the content's ΔR in OUT01 only: ΔR Similarity names OUT01, and Block Weights drops it there."""
    overlapping = "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_2"
    targets = {n: QRTarget(q=t.q, delta_r=t.delta_r.clone() if n == overlapping else torch.randn(t.delta_r.shape, generator=rng) * 0.05)
               for n, t in sd15_content.targets.items()}
    save_native(QRLoRA(targets, rank=4, alpha=4.0, format="native"), comfy.path("models", "loras", "eco", "sd15_style.safetensors"))
    prefix = f"checks/{uuid.uuid4().hex[:8]}"
    graph = Graph()
    unet = graph.add("UNETLoader", unet_name=SD15, weight_dtype="default")
    content = graph.add("QRLoRALoader", lora_name="eco/sd15_content.safetensors")
    style = graph.add("QRLoRALoader", lora_name="eco/sd15_style.safetensors")
    similarity = graph.add("QRLoRASimilarity", qr_lora_a=content[0], qr_lora_b=style[0])
    shown = graph.add("PreviewAny", source=similarity[2])
    kept_out = graph.add("QRLoRABlockWeights", qr_lora=style[0], preset="all blocks", block_weights=similarity[2])
    graph.add("ModelSave", model=graph.add("QRLoRAApply", model=unet, qr_lora=kept_out[0], strength=1.0), filename_prefix=prefix)
    entry = client.run(graph.prompt())
    assert client.ui(entry, shown.node_id)["text"][0] == "OUT01=0"
    assert "mean |cos| per block: IN01" in client.ui(entry, similarity.node_id)["text"][0]
    base, saved = base_models["sd15"], saved_model(comfy, prefix)
    for name, key in SD15_TARGETS.items():
        assert torch.equal(saved[key], base[key]) == (name == overlapping), name


def test_hook_keyframes_change_the_strength_between_steps(comfy, client, base_models, sd15_content, text_and_vae):
    """A hook at strength 3 for the first quarter of sampling and 0 after equals sampling the first k steps patched, the rest not.
    Without keyframes, our hook and the stock Create Hook LoRA (reading the native file) sample as Apply to Model does."""
    clip_name, _ = text_and_vae
    steps, strength, seed = 4, 3.0, 11
    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD15, weight_dtype="default")
    clip = g.add("CLIPLoader", clip_name=clip_name, type="stable_diffusion")
    adapter = g.add("QRLoRALoader", lora_name="eco/sd15_content.safetensors")[0]
    positive = g.add("CLIPTextEncode", clip=clip, text="a photo of a <c> dog")
    negative = g.add("CLIPTextEncode", clip=clip, text="")
    latent = g.add("EmptyLatentImage", width=64, height=64, batch_size=1)
    early = g.add("CreateHookKeyframe", strength_mult=1.0, start_percent=0.0)
    keyframes = g.add("CreateHookKeyframe", strength_mult=0.0, start_percent=0.25, prev_hook_kf=early)

    def sample(model, cond, start=0, end=10000, add_noise="enable", leftover="disable", latent_image=latent):
        return g.add("KSamplerAdvanced", model=model, add_noise=add_noise, noise_seed=seed, steps=steps, cfg=1.0, sampler_name="euler",
                     scheduler="normal", positive=cond, negative=negative, latent_image=latent_image, start_at_step=start,
                     end_at_step=end, return_with_leftover_noise=leftover)

    def hooked(hook_kf=None):
        hooks = g.add("QRLoRAHook", qr_lora=adapter, strength=strength, **({"hook_kf": hook_kf} if hook_kf else {}))
        return g.add("ConditioningSetProperties", cond_NEW=positive, strength=1.0, set_cond_area="default", hooks=hooks)

    patched = g.add("QRLoRAApply", model=unet, qr_lora=adapter, strength=strength)
    stock_hooks = g.add("CreateHookLoraModelOnly", lora_name="eco/sd15_content.safetensors", strength_model=strength)  # the stock node, our file
    stock = g.add("ConditioningSetProperties", cond_NEW=positive, strength=1.0, set_cond_area="default", hooks=stock_hooks)
    runs = {"keyframed": sample(unet, hooked(keyframes)), "hook": sample(unet, hooked()), "plain": sample(unet, positive),
            "applied": sample(patched, positive), "stock hook": sample(unet, stock)}
    for k in range(1, steps):
        first = sample(patched, positive, end=k, leftover="enable")
        runs[f"split{k}"] = sample(unet, positive, start=k, add_noise="disable", latent_image=first)
    saves = {name: g.add("SaveLatent", samples=out, filename_prefix=f"eco/{uuid.uuid4().hex[:8]}") for name, out in runs.items()}
    entry = client.run(g.prompt(), timeout=600)
    latents = {}
    for name, node in saves.items():
        info = client.ui(entry, node.node_id)["latents"][0]
        latents[name] = safetensors.torch.load_file(comfy.path("output", info["subfolder"], info["filename"]))["latent_tensor"]

    def distance(a, b):
        return (latents[a] - latents[b]).abs().max().item()

    # The two-sampler split rounds once more (the latent is scaled out and back in between), and the late steps
    # of an eps-model move the latent by sigma times the model's change, so distances are compared, not thresholded.
    scale = latents["plain"].abs().max().item()
    splits = {k: distance("keyframed", f"split{k}") for k in range(1, steps)}
    best = min(splits, key=splits.get)
    print(f"|latent| {scale:.3g}; hook vs applied {distance('hook', 'applied'):.2e}; keyframed vs split k {splits}; "
          f"vs hook {distance('keyframed', 'hook'):.2e}, vs plain {distance('keyframed', 'plain'):.2e}")
    assert distance("hook", "applied") <= 1e-6 * scale, "a hook without keyframes must act like Apply at the same strength"
    assert distance("stock hook", "applied") <= 1e-6 * scale, "the stock Create Hook LoRA must read the native file into the same patch"
    assert distance("applied", "plain") > 1e-4 * scale, "the adapter must change the sample at strength 3"
    assert splits[best] <= 1e-6 * scale, f"keyframed sampling should equal a patched-then-plain split: {splits}"
    assert all(d > 10 * splits[best] for k, d in splits.items() if k != best), f"only one split may match: {splits}"
    assert distance("keyframed", "hook") > 10 * splits[best] and distance("keyframed", "plain") > 10 * splits[best]
