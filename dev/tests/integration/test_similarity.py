"""ΔR Similarity through the real server: the numbers, the plot, the error."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_qrlora.qrlora_core import QRLoRA, QRTarget
from comfyui_qrlora.qrlora_core.decompose import decompose
from comfyui_qrlora.qrlora_core.formats import load_adapter, save_native
from comfyui_qrlora.qrlora_core.similarity import delta_cosine
from devkit.graph import Graph
from support import seeds

pytestmark = pytest.mark.server

KEYS = {  # kohya name -> tiny SD1.5 weight
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k": "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight",
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k": "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
    "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_2": "output_blocks.1.1.transformer_blocks.0.ff.net.2.weight",
}


@pytest.fixture(scope="module")
def pair(comfy, base_models):
    """Two adapters on one basis whose ΔRs overlap by a different, known amount in each layer."""
    g = seeds.generator("test_similarity:pair")
    os.makedirs(comfy.path("models", "loras", "sim"), exist_ok=True)
    content, style = {}, {}
    for i, (name, key) in enumerate(KEYS.items()):
        b = decompose(base_models["sd15"][key], 4)
        a, c = torch.randn(4, b.r.shape[1], generator=g), torch.randn(4, b.r.shape[1], generator=g)
        mix = [0.0, 0.3, -0.7, 0.95][i]
        content[name] = QRTarget(q=b.q, delta_r=a * 0.02)
        style[name] = QRTarget(q=b.q, delta_r=(mix * a + (1 - mix**2) ** 0.5 * c) * 0.03)
    names = {}
    for label, targets in (("content", content), ("style", style)):
        names[label] = f"sim/{label}.safetensors"
        save_native(QRLoRA(targets, rank=4, alpha=4.0, format="native"), comfy.path("models", "loras", names[label]))
    # A third adapter on a layer the others lack, for the error case.
    other = {"lora_unet_down_blocks_0_attentions_0_proj_in": QRTarget(q=torch.linalg.qr(torch.randn(320, 4, generator=g))[0], delta_r=torch.randn(4, 320, generator=g))}
    names["other"] = "sim/other.safetensors"
    save_native(QRLoRA(other, rank=4, alpha=4.0, format="native"), comfy.path("models", "loras", names["other"]))
    return names


def compare(client, a, b, prefix="sim/plot"):
    g = Graph()
    la = g.add("QRLoRALoader", lora_name=a)
    lb = g.add("QRLoRALoader", lora_name=b)
    sim = g.add("QRLoRASimilarity", qr_lora_a=la[0], qr_lora_b=lb[0])
    save = g.add("SaveImage", images=sim[0], filename_prefix=prefix)
    return g.prompt(), sim.node_id, save.node_id


def test_similarity_numbers_match_delta_cosine_and_the_plot_is_drawn(comfy, client, pair):
    prompt, sim_id, save_id = compare(client, pair["content"], pair["style"])
    entry = client.run(prompt)
    ui = client.ui(entry, sim_id)

    a = load_adapter(comfy.path("models", "loras", pair["content"]))
    b = load_adapter(comfy.path("models", "loras", pair["style"]))
    expected = delta_cosine(a, b)
    got = ui["qrlora_similarity"][0]
    assert got["layers"] == list(expected)
    assert np.allclose(got["cosine"], list(expected.values()), atol=1e-9)
    assert got["mean_abs"] == pytest.approx(np.mean(np.abs(list(expected.values()))))
    assert got["max_abs"] == pytest.approx(max(abs(v) for v in expected.values()))
    # The overlaps were built in: about 0, 0.3, -0.7 and 0.95 (up to sampling noise of 4 x 320 entries).
    assert np.allclose(sorted(got["cosine"]), sorted([0.0, 0.3, -0.7, 0.95]), atol=0.15)

    text = ui["text"][0]
    assert f"mean |cos| {got['mean_abs']:.4f}, max |cos| {got['max_abs']:.4f}" in text
    for name, c in expected.items():
        assert f"{c:+.4f}  {name}" in text

    preview = ui["images"][0]
    saved = client.ui(entry, save_id)["images"][0]
    for info, folder in ((preview, "temp"), (saved, "output")):
        image = np.asarray(Image.open(comfy.path(folder, info["subfolder"], info["filename"])).convert("RGB"))
        assert image.shape == (384, 768, 3)
        assert image.std() > 20, "the plot is blank"
        red, green = (image == (200, 60, 50)).all(-1).sum(), (image == (46, 150, 90)).all(-1).sum()
        assert red > 200 and green > 200, "the |cos| 0.95 layer should draw red and the ~0 layer green"
        assert_title_drawn(image, f"dR cosine per layer: {pair['content']} vs {pair['style']}")


def assert_title_drawn(image: np.ndarray, title: str) -> None:
    """The plot's first line is `title` in PIL's own font, every character a glyph of it (a Δ, which it lacks, drew
    a box: the title says dR)."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)

    def drawn(text: str, width: int) -> np.ndarray:
        canvas = Image.new("L", (width, 22), 255)
        ImageDraw.Draw(canvas).text((2, 2), text, fill=0, font=font)
        return np.asarray(canvas) < 128

    missing = drawn("\uffff", 20)
    assert not [c for c in set(title) - {" "} if (drawn(c, 20) == missing).all()], "a character PIL's font has no glyph for"

    def inked(mask: np.ndarray) -> np.ndarray:  # cropped to its ink
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]

    theirs = inked(image[4:23, :, :].mean(-1) < 128)  # the title (drawn at y 8), above the second line (at y 24)
    ours = inked(drawn(title, image.shape[1]))
    assert theirs.shape == ours.shape and (theirs != ours).mean() < 0.01, "the title drawn is another text (a box for a missing glyph?)"


def test_adapters_without_a_common_layer_are_an_error_a_person_understands(client, pair):
    prompt, _, _ = compare(client, pair["content"], pair["other"], prefix="sim/never")
    error = client.run_expecting_error(prompt)
    assert "share no layer of the same shape" in error["exception_message"]
    assert "same base model" in error["exception_message"]
