"""The toy world's definition (issue 12), its scores and its text encoder's formula."""

import hashlib

import numpy as np
import pytest

from toy_world import scores, text_encoder, world


def items(rng):
    for shape in world.SHAPES:
        for style in world.STYLES:
            yield world.random_item(rng, (shape,), (style,))


def test_every_image_is_the_flat_background_with_one_centred_shape_in_the_80px_box():
    rng = np.random.default_rng(0)
    for item in items(rng):
        image = world.render(item)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        fg = scores.foreground(image)
        outside = np.ones_like(fg)
        outside[24:104, 24:104] = False
        assert not fg[outside].any(), f"{item} draws outside the 80x80 box"
        assert (image[world.coverage(item.shape) == 0] == world.BACKGROUND).all(), item
        ys, xs = np.nonzero(world.mask(item.shape))
        assert abs((xs.min() + xs.max() + 1) / 2 - 64) <= 1 and abs((ys.min() + ys.max() + 1) / 2 - 64) <= 1, f"{item.shape} is not centred"
        assert 76 <= max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 <= 80, f"{item.shape} does not fill the box"  # the star's tips are thin


def test_the_heart_is_the_parametric_curve_apex_down_80px_wide():
    ys, xs = np.nonzero(world.mask("heart"))
    assert xs.max() - xs.min() + 1 == 80 and 69 <= ys.max() - ys.min() + 1 <= 73  # 80 * 28.9 / 32 = 72
    bottom = ys.max()
    assert abs(xs[ys == bottom].mean() - 63.5) < 2, "the apex is at the bottom, in the middle"
    top_row = world.mask("heart")[ys.min()]
    assert not top_row[60:68].any(), "the two lobes leave a notch at the top centre"


def test_the_checkerboard_is_8px_squares_of_the_two_held_out_colours():
    image = world.render(world.Item("square", "checkerboard", world.CHECKER_COLOURS))
    assert tuple(image[30, 30]) == (20, 20, 20) and tuple(image[30, 33]) == (240, 200, 30)  # squares change at 32
    assert tuple(image[40, 40]) == (20, 20, 20) and tuple(image[40, 48]) == (240, 200, 30)
    inside = image[25:103, 25:103].reshape(-1, 3)
    assert {tuple(c) for c in inside} == set(world.CHECKER_COLOURS)


def test_base_world_holds_neither_the_heart_nor_the_checkerboard():
    base = list(world.base_items())
    assert len(base) == len(world.BASE_SHAPES) * (7 + (len(world.BASE_STYLES) - 1) * world.BASE_COLOUR_PAIRS)
    assert len(set(base)) == len(base) and base == list(world.base_items()), "each item once, the same on every call"
    held_out_shapes, held_out_styles = set(world.BENCH_SHAPES + world.MIXING_SHAPES), set(world.BENCH_STYLES + world.MIXING_STYLES + world.TUNING_STYLES)
    assert "heart" in held_out_shapes and "checkerboard" in held_out_styles
    assert not any(i.shape in held_out_shapes or i.style in held_out_styles for i in base), "the base model never sees a held-out one"
    assert world.Item("circle", "horizontal stripes", ("red", "blue")).caption() == "a red and blue circle in horizontal stripes style"
    assert world.Item("ring", "solid", ("orange",)).caption(with_colours=False) == "a ring in solid style"


def test_scores_recognise_every_rendered_shape_and_style():
    rng = np.random.default_rng(1)
    for item in items(rng):
        s = scores.score(world.render(item), item.shape, item.style, item.rgb())
        assert s["best_shape"] == item.shape and s["shape_iou"] > 0.9, (item, s)
        floor = 0.94 if (item.shape, item.style) == ("cross", "big dots") else 0.99  # one dot half cut by the arm's edge: a class of few pixels
        assert s["pattern"] > floor and s["success"], (item, s)
        if len(np.unique(world.pattern(item.style)[world.mask(item.shape)])) == 2:  # both colours show (big dots miss the frame)
            assert s["best_style"] == item.style, (item, s)


def test_a_heart_in_another_pattern_of_the_checker_colours_fails_the_pattern_score():
    for style in ("solid", "horizontal stripes", "vertical stripes", "diagonal stripes", "dots"):
        colours = world.CHECKER_COLOURS[:1] if style == "solid" else world.CHECKER_COLOURS
        s = scores.score(world.render(world.Item("heart", style, colours)), "heart", "checkerboard", world.CHECKER_COLOURS)
        assert s["shape_iou"] > 0.95 and s["pattern"] < scores.PATTERN_PASS - 0.05 and not s["success"], (style, s)
    s = scores.score(world.render(world.Item("circle", "checkerboard", world.CHECKER_COLOURS)), "heart", "checkerboard", world.CHECKER_COLOURS)
    assert s["pattern"] > 0.99 and s["best_shape"] == "circle" and not s["success"]


def test_a_fill_of_one_of_a_held_out_styles_colours_fails_its_pattern():
    """Plaid and windows give one colour three quarters of the shape: scored per pixel, a fill of that colour alone
    passed (0.87-0.90); per class of the pattern it scores 0.5, and the pattern itself still 1."""
    for style in world.BENCH_STYLES + world.MIXING_STYLES + world.TUNING_STYLES:
        colours = world.FIXED_COLOURS[style]
        for shape in world.MIXING_SHAPES:
            assert scores.pattern_score(world.render(world.Item(shape, style, colours)), style, colours) > 0.99
            for colour in colours:
                solid = world.render(world.Item(shape, "solid", (colour,)))
                s = scores.pattern_score(solid, style, colours)
                assert s < scores.PATTERN_PASS - 0.2 and not scores.judge(solid, shape, style, colours)["success"], (shape, style, colour, s)


def test_text_encoder_formula_gives_the_same_bytes_everywhere():
    # The UNet was trained with the encoder this formula gave on the GPU machine (numpy 2.5, torch 2.11; its
    # caption embeddings matched this machine's to 2.4e-6); a user's machine must rebuild it bit for bit.
    # The digests pin the formula's output (taken with numpy 2.4).
    token = text_encoder.tensor("text_model.embeddings.token_embedding.weight", (text_encoder.VOCAB, text_encoder.WIDTH))
    assert token.dtype == np.float16 and abs(float(token.astype(np.float64).std()) - 1.0) < 0.01
    assert hashlib.sha256(token.tobytes()).hexdigest()[:16] == TOKEN_DIGEST
    fc2 = text_encoder.tensor("text_model.encoder.layers.11.mlp.fc2.weight", (text_encoder.WIDTH, text_encoder.MLP))
    assert hashlib.sha256(fc2.tobytes()).hexdigest()[:16] == FC2_DIGEST


def test_text_encoder_layout_is_comfyuis_clip_l():
    from devkit.host import import_comfy

    import_comfy()
    import comfy.sd1_clip
    import torch

    clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float16)
    expected = {k[len("transformer."):]: tuple(v.shape) for k, v in clip.state_dict().items() if k.startswith("transformer.")}
    assert text_encoder.layout() == expected


TOKEN_DIGEST = "b5c6912ca7e57ed7"
FC2_DIGEST = "68e0e331f551279e"


def test_the_shipped_codec_carries_the_held_out_checker_above_the_pass_mark():
    """The pass mark must measure the adapters, not the codec: the world's own checkered heart and circle, through the
    shipped VAE (Encode -> Decode), score a success (the pattern's edges, which the codec blurs, are not scored)."""
    from devkit.host import import_comfy

    import_comfy()
    import comfy.sd
    import safetensors.torch

    from toy_world import model_files, train_base

    vae = comfy.sd.VAE(sd=safetensors.torch.load_file(f"{model_files.WEIGHTS}/{model_files.VAE_FILE}"))
    for row in train_base.held_out_roundtrip(vae, "shipped codec"):
        assert row["success"] and row["pattern"] >= scores.PATTERN_PASS + 0.1, row


def test_judge_calls_the_ideal_mix_rejects_blanks_and_fragments_flags_dirt_and_leakage():
    """scores.judge (the mixing bench's verdict): every held-out pair's own rendering succeeds; the rest is named."""
    for shape in world.MIXING_SHAPES:
        for style in world.MIXING_STYLES:
            colours = world.FIXED_COLOURS[style]
            v = scores.judge(world.render(world.Item(shape, style, colours)), shape, style, colours)
            assert v["success"] and v["called_shape"] == shape and v["content_leak"] == 0 and v["dirt"] == 0, (shape, style, v)
    colours = world.FIXED_COLOURS["bricks"]
    blank = np.full((128, 128, 3), world.BACKGROUND, dtype=np.uint8)
    assert scores.judge(blank, "arrow", "bricks", colours)["called_shape"] is None  # nothing drawn: rejected
    quarter = world.mask("circle") & (np.arange(128) < 64)[:, None] & (np.arange(128) < 64)[None, :]
    small = np.where(quarter[..., None], np.uint8(20), blank)
    assert scores.judge(small, "arrow", "bricks", colours)["called_shape"] is None  # a quarter of the circle: no shape fits
    dirty = world.render(world.Item("arrow", "bricks", colours)).copy()
    dirty[:8, :] = 20  # a dark band across the top of the background
    v = scores.judge(dirty, "arrow", "bricks", colours)
    assert v["called_shape"] == "arrow" and not v["valid"] and not v["success"]
    leaked = world.render(world.Item("circle", "horizontal stripes", ("green", "yellow")))  # a base shape in the content set's fill
    v = scores.judge(leaked, "arrow", "bricks", colours)
    assert v["content_leak"] == 1 and v["style_leak"] > 0.95 and not v["success"]
