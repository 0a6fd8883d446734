"""Outside probing, round 3 (issue 24): values and patterns a user or a file can make absurd, through the real server.

A target pattern that makes a backtracking matcher run for hours; checks a
file could switch off with a metadata flag; every floating dtype the format
has; deltas made infinite in the graph or near 1e38 in a file; the stock
loaders given another model's file or odd shapes; strings that cannot be
written; damaged training state.
Each is refused in one sentence (or, on the stock path, skipped and logged),
the server keeps answering, and the base model stays bit for bit as it was.
"""

import glob
import os
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
import safetensors.torch
import torch

from integration.conftest import CLIP_L, SD3
from integration.test_probing import apply_prompt, expected_weights, load_prompt, loras, sd3_adapter, summary
from integration.test_inference import SD3_TARGETS, assert_only_targets_changed, rows
from integration.test_train import UNET, base_files, train_prompt  # noqa: F401  (base_files is a fixture)
from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.formats import save_native
from comfyui_qrlora.qrlora_core.merge import merge
from comfyui_qrlora.qrlora_core.safefile import DTYPES
from comfyui_qrlora.qrlora_core.training.state import TrainingState
from support import seeds
from support.checks import assert_base_untouched, saved_model
from devkit.graph import Graph

pytestmark = pytest.mark.server

LAYER = "transformer.transformer_blocks.0.attn.to_q"


@pytest.fixture
def generator(request):
    return torch.Generator().manual_seed(seeds.seed_for(request.node.nodeid))


def stock_prompt(lora_name, prefix, strength=1.0):
    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD3, weight_dtype="default")
    g.add("ModelSave", model=g.add("LoraLoaderModelOnly", model=unet, lora_name=lora_name, strength_model=strength), filename_prefix=prefix)
    return g.prompt()


def new_prefix():
    return f"checks/{uuid.uuid4().hex[:8]}"


def assert_unchanged(base, saved):
    for key, w in base.items():
        assert torch.equal(saved[key].to(w.dtype), w), f"{key} changed"


# ------------------------------------------------ 2. a target pattern cannot freeze the server

# Python's re takes about 20 s for this on the small SD1.5's names (x10 per two more characters after
# "transformer_blocks_0_"), holding the interpreter: no HTTP answer meanwhile. Matched in linear time, none match.
CATASTROPHIC = r"transformer_blocks_0_(([a-z_0-9]+)+)+!"


def test_a_catastrophic_target_pattern_does_not_freeze_the_server(comfy, client, base_files):
    prompt = train_prompt("qrprobe/pattern", steps=2, target_preset="custom pattern", target_pattern=CATASTROPHIC)
    answers, done = [], threading.Event()
    outcome = {}

    def run():
        outcome["error"] = client.run_expecting_error(prompt)
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    while not done.is_set():
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(comfy.url + "/system_stats", timeout=5) as r:
                r.read()
            answers.append(time.perf_counter() - started)
        except (urllib.error.URLError, TimeoutError):
            answers.append(float("inf"))
        time.sleep(0.1)
    worker.join()
    print(f"/system_stats while the pattern was matched: {len(answers)} answers, slowest {max(answers):.2f} s")
    assert max(answers) < 10.0, "the server stopped answering while it matched the pattern"  # re: 20 s and more
    assert "match none of this model's" in outcome["error"]["exception_message"], outcome["error"]

    refused = train_prompt("qrprobe/pattern", steps=2, target_preset="custom pattern", target_pattern=r"(attn1)_to_\1")
    error = client.run_expecting_error(refused)["exception_message"]
    assert "cannot be used: '\\1' (a back-reference" in error, error


# ------------------------------------------------ 4. the basis checks come from the tensors

def _scaled_q_file(comfy, base, generator, name):
    """A native file whose Q is a basis times 1000, with the flag that used to switch the checks off."""
    adapter = sd3_adapter(base, generator)
    for t in adapter.targets.values():
        t.q = t.q * 1000
    path = loras(comfy, name)
    save_native(adapter, path)
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, "pt") as f:
        metadata = f.metadata()
    metadata["qrlora.shared_basis"] = "0"
    safetensors.torch.save_file(tensors, path, metadata=metadata)
    return "probe/" + name


def test_a_scaled_q_is_refused_whatever_the_file_says_about_itself(comfy, client, base_models, generator):
    base = base_models["sd3"]
    name = _scaled_q_file(comfy, base, generator, "scaled_q.safetensors")
    status, body, _ = summary(comfy, name)
    assert status == 400 and "is not orthonormal" in body["error"], body
    error = client.run_expecting_error(load_prompt(name))
    assert "is not orthonormal" in error["exception_message"] and "scaled_q.safetensors" in error["exception_message"], error

    offset = comfy.log_size()
    client.run(stock_prompt(name, prefix := new_prefix()))  # the stock loader checks Q too, and loads nothing of it
    assert_unchanged(base, saved_model(comfy, prefix))
    assert "columns are not of unit length" in comfy.log_tail(offset)
    assert_base_untouched(comfy, client, SD3, base)


def test_a_mix_of_two_bases_still_loads_through_both_paths(comfy, client, base_models, generator):
    """A fallback mix's Q is two bases side by side: each rank columns of it are checked as a basis, and it passes."""
    base = base_models["sd3"]
    one = sd3_adapter(base, generator)
    other = QRLoRA({n: QRTarget(q=torch.linalg.qr(torch.randn(t.q.shape, generator=generator))[0], delta_r=t.delta_r.clone())
                    for n, t in one.targets.items()}, rank=one.rank, alpha=one.alpha, format="native", source="other")
    mixed, report = merge([one, other], [1.0, 0.5])
    assert report.fallback and not mixed.shared_basis
    save_native(mixed, loras(comfy, "two_bases.safetensors"))
    expected = {}
    for name, (key, block) in SD3_TARGETS.items():
        w = expected.setdefault(key, base[key].double().clone())
        t = mixed.targets[name]
        rows(w, block).add_(mixed.scale * t.q.double() @ t.delta_r.double())
    prompt, _ = apply_prompt("probe/two_bases.safetensors", prefix=(prefix := new_prefix()))
    client.run(prompt)
    assert_only_targets_changed(base, saved_model(comfy, prefix), expected)
    client.run(stock_prompt("probe/two_bases.safetensors", stock := new_prefix()))
    assert_only_targets_changed(base, saved_model(comfy, stock), expected)


# ------------------------------------------------ 5. every floating dtype the format has

FLOATS = sorted(k for k, d in DTYPES.items() if d.is_floating_point)


@pytest.mark.parametrize("stored", FLOATS)
def test_every_floating_dtype_loads_summarises_and_applies(comfy, client, base_models, generator, stored):
    base = base_models["sd3"]
    dtype = DTYPES[stored]
    adapter = sd3_adapter(base, generator)
    adapter.targets[LAYER].delta_r = torch.triu(adapter.targets[LAYER].delta_r)  # stored packed (.qr.delta_r_upper)
    file = f"dtype_{stored}.safetensors"
    save_native(adapter, path := loras(comfy, file))
    tensors = safetensors.torch.load_file(path)  # Q and ΔR as a file in this dtype holds them (the pack writes fp32, bf16, fp16)
    with safetensors.safe_open(path, "pt") as f:
        metadata = f.metadata()
    tensors = {k: v.to(dtype) if k.endswith((".qr.q", ".qr.delta_r", ".qr.delta_r_upper")) else v for k, v in tensors.items()}
    safetensors.torch.save_file(tensors, path, metadata=metadata)
    for t in adapter.targets.values():
        t.q, t.delta_r = t.q.to(dtype), t.delta_r.to(dtype)
    status, body, _ = summary(comfy, "probe/" + file)
    assert status == 200 and body["rank"] == adapter.rank, body
    as_stored = QRLoRA({n: QRTarget(q=t.q.double(), delta_r=t.delta_r.double()) for n, t in adapter.targets.items()},
                       rank=adapter.rank, alpha=adapter.alpha, format="native")
    expected = expected_weights(base, as_stored)
    for build in ("apply", "stock"):
        prefix = new_prefix()
        prompt = apply_prompt("probe/" + file, prefix=prefix)[0] if build == "apply" else stock_prompt("probe/" + file, prefix)
        client.run(prompt)
        saved = saved_model(comfy, prefix)
        for key, want in expected.items():
            change, wanted = saved[key].double() - base[key].double(), want - base[key].double()
            error = float((change - wanted).norm() / wanted.norm())
            assert error < 1e-4, f"{build}, {stored}: {key} off by {error:.2g}"  # the stored values, added in float32


# ------------------------------------------------ 6. absurd values made in the graph or stored in a file

def test_block_weights_that_make_delta_r_infinite_are_refused(comfy, client, base_models, generator):
    save_native(sd3_adapter(base_models["sd3"], generator), loras(comfy, "blocks.safetensors"))
    for spec, words in (("*=1e300", "makes layer"), ("D0-" + "9" * 4300 + "=1", "is not a range of one kind of block")):
        g = Graph()
        weighted = g.add("QRLoRABlockWeights", qr_lora=g.add("QRLoRALoader", lora_name="probe/blocks.safetensors")[0],
                         preset="all blocks", block_weights=spec)
        g.add("QRLoRASave", qr_lora=weighted[0], filename_prefix="probe/never_blocks", compact=False, dtype="fp32")
        error = client.run_expecting_error(g.prompt())
        assert words in error["exception_message"] and error["exception_type"].endswith("AdapterError"), error
    assert not [f for f in os.listdir(os.path.dirname(loras(comfy, "x"))) if f.startswith("never_blocks")]


def _with_metadata(path, **changes):
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, "pt") as f:
        metadata = f.metadata()
    metadata.update(changes)
    safetensors.torch.save_file(tensors, path, metadata=metadata)


def test_alpha_or_delta_r_near_1e38_is_refused_or_said(comfy, client, base_models, generator):
    base = base_models["sd3"]
    huge = sd3_adapter(base, generator)
    for t in huge.targets.values():
        t.delta_r[0, 0] = 1e38
    save_native(huge, loras(comfy, "huge_delta.safetensors"))
    status, body, _ = summary(comfy, "probe/huge_delta.safetensors")
    assert status == 400 and "beyond any weight a model holds" in body["error"], body
    assert "beyond any weight" in client.run_expecting_error(apply_prompt("probe/huge_delta.safetensors")[0])["exception_message"]
    offset = comfy.log_size()
    client.run(stock_prompt("probe/huge_delta.safetensors", prefix := new_prefix()))
    assert "beyond any weight a model holds" in comfy.log_tail(offset)
    assert_unchanged(base, saved_model(comfy, prefix))

    save_native(sd3_adapter(base, generator), path := loras(comfy, "huge_alpha.safetensors"))
    _with_metadata(path, **{"qrlora.alpha": "1e36"})
    prompt, apply_id = apply_prompt("probe/huge_alpha.safetensors")
    text = client.ui(client.run(prompt), apply_id)["text"][0]
    assert "far beyond any trained adapter's" in text, text
    _with_metadata(path, **{"qrlora.alpha": "3e38"})
    error = client.run_expecting_error(apply_prompt("probe/huge_alpha.safetensors", strength=4.0)[0])["exception_message"]
    assert "beyond any weight a model holds" in error or "would make layer" in error, error
    assert_base_untouched(comfy, client, SD3, base)


def test_hook_strength_nan_is_refused(comfy, client, base_models, generator):
    save_native(sd3_adapter(base_models["sd3"], generator), loras(comfy, "hook_nan.safetensors"))
    g = Graph()
    hooks = g.add("QRLoRAHook", qr_lora=g.add("QRLoRALoader", lora_name="probe/hook_nan.safetensors")[0], strength=float("nan"))
    g.add("PreviewAny", source=hooks)
    assert "The input strength is nan" in client.run_expecting_error(g.prompt())["exception_message"]


def test_sample_settings_cfg_nan_is_refused(client, text_and_vae):
    """ComfyUI's min/max let NaN through; sampled at NaN cfg, every training sample would be NaN."""
    clip_name, vae_name = text_and_vae
    g = Graph()
    settings = g.add("QRLoRASampleSettings", clip=g.add("CLIPLoader", clip_name=clip_name, type="stable_diffusion"),
                     vae=g.add("VAELoader", vae_name=vae_name), prompts="a photo of <c>", negative="", every=1, width=64,
                     height=64, steps=1, cfg=float("nan"), sampler_name="euler", scheduler="normal", seed=0)
    g.add("PreviewAny", source=settings)
    assert "The input cfg is nan" in client.run_expecting_error(g.prompt())["exception_message"]


@pytest.mark.parametrize("name", ["default_caption", "caption 1", "negative"])
def test_an_unencodable_caption_or_negative_prompt_is_refused(client, text_and_vae, name):
    """The tokenizer would fail on an unpaired surrogate with a TypeError."""
    clip_name, vae_name = text_and_vae
    g = Graph()
    clip, vae = g.add("CLIPLoader", clip_name=clip_name, type="stable_diffusion"), g.add("VAELoader", vae_name=vae_name)
    if name != "negative":  # a caption may come from any text node, as the folder loader's texts do
        captions = {"captions": g.add("PrimitiveString", value="a \ud800 photo")} if name == "caption 1" else {}
        node = g.add("QRLoRATrainingData", images=g.add("EmptyImage", width=64, height=64, batch_size=1, color=0), vae=vae, clip=clip,
                     resolution=64, default_caption="a photo" if captions else "a \ud800 photo", **captions)[2]
    else:
        node = g.add("QRLoRASampleSettings", clip=clip, vae=vae, prompts="a photo of <c>", negative="bad \ud800", every=1, width=64,
                     height=64, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal", seed=0)
    g.add("PreviewAny", source=node)
    error = client.run_expecting_error(g.prompt())
    assert f"The input {name} has a character that cannot be written into a file (U+D800" in error["exception_message"], error
    assert error["exception_type"].endswith("AdapterError"), error


def test_a_nan_keyframe_multiplier_is_refused(comfy, client, base_models, generator):
    """ComfyUI's Create Hook Keyframe lets NaN through its min/max; the hook's strength would be NaN at that keyframe."""
    save_native(sd3_adapter(base_models["sd3"], generator), loras(comfy, "hook_kf_nan.safetensors"))
    g = Graph()
    keyframes = g.add("CreateHookKeyframe", strength_mult=1.0, start_percent=0.0)
    keyframes = g.add("CreateHookKeyframe", strength_mult=float("nan"), start_percent=0.5, prev_hook_kf=keyframes)
    hooks = g.add("QRLoRAHook", qr_lora=g.add("QRLoRALoader", lora_name="probe/hook_kf_nan.safetensors")[0], strength=1.0, hook_kf=keyframes)
    g.add("PreviewAny", source=hooks)
    assert "The input strength_mult of keyframe 2 is nan" in client.run_expecting_error(g.prompt())["exception_message"]


# ------------------------------------------------ 7 and 10. the stock path: another model's file, odd shapes

def _sampled_with_hooks(client, lora_name):
    g = Graph()
    unet = g.add("UNETLoader", unet_name=SD3, weight_dtype="default")
    clip = g.add("CLIPLoader", clip_name=CLIP_L, type="sd3")
    text = g.add("CLIPTextEncode", clip=clip, text="a photo")
    hooked = g.add("ConditioningSetProperties", cond_NEW=text, strength=1.0, set_cond_area="default",
                   hooks=g.add("CreateHookLoraModelOnly", lora_name=lora_name, strength_model=1.0))
    sampled = g.add("KSampler", model=unet, seed=1, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple", positive=hooked,
                    negative=text, latent_image=g.add("EmptySD3LatentImage", width=64, height=64, batch_size=1), denoise=1.0)
    g.add("SaveLatent", samples=sampled, filename_prefix=f"probe/{uuid.uuid4().hex[:8]}")
    return client.run(g.prompt())


def test_another_models_file_through_the_stock_path_is_skipped_and_logged(comfy, client, base_models, text_and_vae, generator):
    """SD3's layer names with other sizes (a larger model's): ComfyUI's own LoRA logs such layers and leaves them."""
    base = base_models["sd3"]
    targets = {}
    for name in SD3_TARGETS:
        q = torch.linalg.qr(torch.randn(256, 4, generator=generator))[0]
        targets[name] = QRTarget(q=q, delta_r=torch.randn(4, 256, generator=generator) * 0.05)
    save_native(QRLoRA(targets, rank=4, alpha=4.0, format="native"), loras(comfy, "bigger_model.safetensors"))
    offset = comfy.log_size()
    client.run(stock_prompt("probe/bigger_model.safetensors", prefix := new_prefix()))
    assert_unchanged(base, saved_model(comfy, prefix))
    assert "left unchanged (is the LoRA made for another model?)" in comfy.log_tail(offset)
    _sampled_with_hooks(client, "probe/bigger_model.safetensors")
    assert_base_untouched(comfy, client, SD3, base)


@pytest.mark.parametrize("q", [torch.zeros(0), torch.tensor(1.0), torch.zeros(4, 0)], ids=["empty", "scalar", "rank 0"])
def test_odd_shapes_through_the_stock_path_are_skipped_and_logged(comfy, client, base_models, q):
    """A published layer with a stock alpha tensor: its rank was read as q.shape[-1] (ZeroDivisionError, IndexError)."""
    safetensors.torch.save_file({f"{LAYER}.lora.q.weight": q, f"{LAYER}.lora.delta_r.weight": torch.zeros(4, 128),
                                 f"{LAYER}.alpha": torch.tensor(4.0)}, loras(comfy, name := f"odd_shape_{q.dim()}_{q.numel()}.safetensors"))
    offset = comfy.log_size()
    client.run(stock_prompt("probe/" + name, prefix := new_prefix()))
    assert_unchanged(base_models["sd3"], saved_model(comfy, prefix))
    assert "which do not fit together; the file is damaged. That layer is left unchanged" in comfy.log_tail(offset)


# ------------------------------------------------ 9 and 10. crafted metadata, damaged training state, unencodable text
# (A setting of another type, such as steps "two", is refused by TrainConfig in a sentence: unit/test_training.py. Through
# /prompt this ComfyUI converts "2" and refuses "two" itself before the node runs.)

@pytest.mark.parametrize("merged_from", ["5", "[" * 100000 + "]" * 100000], ids=["a number", "nested too deep"])
def test_save_takes_any_merged_from_a_file_carries(comfy, client, base_models, generator, merged_from):
    save_native(sd3_adapter(base_models["sd3"], generator), path := loras(comfy, "merged_from.safetensors"))
    _with_metadata(path, **{"qrlora.merged_from": merged_from})
    g = Graph()
    save = g.add("QRLoRASave", qr_lora=g.add("QRLoRALoader", lora_name="probe/merged_from.safetensors")[0],
                 filename_prefix="probe/resaved", compact=False, dtype="fp32")
    name = client.ui(client.run(g.prompt()), save.node_id)["text"][0].removeprefix("Saved ")
    with safetensors.safe_open(comfy.path("models", "loras", name), "pt") as f:
        assert f.metadata()["modelspec.merged_from"]


def _resumable(comfy, base, generator, damage):
    """A checkpoint of two SD1.5 layers whose training state is damaged as `damage` says."""
    names = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k": "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"}
    targets, layers = {}, {}
    for name, key in names.items():
        b = decompose(base[key].float(), 4)
        targets[name] = QRTarget(q=b.q, delta_r=torch.triu(torch.randn(4, b.r.shape[1], generator=generator)) * 0.01)
        moments = torch.zeros(4, b.r.shape[1]) if damage != "optimizer" else torch.zeros(3, 7)
        layers[name] = {"step": torch.tensor(2.0), "exp_avg": moments, "exp_avg_sq": moments.clone()}
    own = torch.Generator().get_state()
    draws = own[: len(own) // 2] if damage == "rng" else own
    state = TrainingState(2, "AdamW", layers, {"draws": draws})
    adapter = QRLoRA(targets, rank=4, alpha=4.0, format="native", metadata={"steps": 2})
    path = comfy.path("models", "loras", "qrprobe", f"damaged_{damage}.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_native(adapter, path, extra=state.pack())
    return f"qrprobe/damaged_{damage}.safetensors"


@pytest.mark.parametrize("damage", ["rng", "optimizer"])
def test_resuming_from_a_damaged_training_state_says_so(comfy, client, base_files, generator, damage):
    name = _resumable(comfy, base_files, generator, damage)
    prompt = train_prompt("qrprobe/resumed", steps=1)
    prompt["adapter"] = {"class_type": "QRLoRALoader", "inputs": {"lora_name": name}}
    prompt["train"]["inputs"]["qr_lora"] = ["adapter", 0]
    error = client.run_expecting_error(prompt)
    text = error["exception_message"]
    assert f"damaged_{damage}.safetensors: its training state is damaged" in text and "continue from an earlier checkpoint" in text, text
    assert error["exception_type"].endswith("AdapterError"), error


def test_an_unencodable_trigger_word_is_refused_before_step_1(comfy, client, base_files):
    """Checked with the other settings, before the basis is decomposed: a rank no other test trains at leaves no basis."""
    error = client.run_expecting_error(train_prompt("qrprobe/surrogate", steps=50, rank=5, trigger_words="<s>\ud800 style"))
    assert "The input trigger_words has a character that cannot be written into a file (U+D800" in error["exception_message"], error
    assert not glob.glob(comfy.path("models", "qrlora_bases", "r5-*")), "work was done before the check"
