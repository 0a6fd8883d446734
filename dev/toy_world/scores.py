"""Scores of a generated image against the world's definition (toy_world.world).

- foreground: pixels whose colour differs from the flat background by more
  than 40 in some channel (every palette colour differs by more than 100).
- shape_iou: intersection over union of the foreground with the rendered
  mask of the expected shape (the world draws every shape at one place and
  size, so no alignment is needed); best_shape is the world shape whose mask
  has the highest IoU with the foreground.
- pattern: over the foreground pixels away from its edge (1 px eroded)
  and at least PATTERN_EDGE px inside one of the pattern's own regions
  (an 8 px checker square keeps its central 4x4), per class of the
  pattern (its first and its second colour's pixels), the fraction whose
  nearest reference colour (the palette, the style's colours and the
  background) is the colour the style's pattern puts at that pixel,
  averaged over the two classes; the better of the two colour assignments
  counts, so a pattern with its colours swapped still scores. A pattern
  laid out differently scores about 0.65 or less; a fill of one of its
  colours alone about 0.5 (per pixel, before 2026-12-06, such a fill
  scored 0.87-0.90 on plaid and windows, whose second or first colour
  covers three quarters of the shape); any other colours score near 0. The pattern's own edges are left out because the
  codec blurs every colour edge by a pixel or two: the world's own
  checkered heart, through VAE Encode -> Decode, keeps 0.90 of its pixels
  with them left out and only 0.75 with them counted, which would make
  the pass mark a measure of the codec, not of the adapters.
- best_style: the world style whose layout explains the colours best
  (mean purity of the pattern's two classes after snapping each pixel to
  its nearest palette colour).
- success: best_shape is the expected shape and pattern >= PATTERN_PASS.

The mixing benchmark (bench/mixing.py) judges more strictly (`judge`):
- reject: no shape is called when the best IoU is under REJECT_IOU or
  within REJECT_MARGIN of the second best (noise, blobs, two shapes at once).
- validity: the background stays clean: at most BACKGROUND_DIRT of the
  canvas outside the called (else the expected) shape, grown by 3 px, is
  foreground.
- leakage: content_leak, the share of the scored fill whose nearest colour
  is a palette colour the style does not use (the content set's fills);
  style_leak, the best IoU with a base shape (the style set's shapes).
- success: a shape is called, it is the expected one, the image is valid
  and the pattern agreement is at least PATTERN_PASS.
"""

from functools import lru_cache

import numpy as np

from . import world

FOREGROUND_THRESHOLD = 40
PATTERN_PASS = 0.75  # a pattern laid out otherwise scores about 0.65 or less
PATTERN_EDGE = 2  # px: how far inside its own region of the pattern a pixel must lie to be scored
REJECT_IOU = 0.5  # judge: below this best IoU no shape is called
REJECT_MARGIN = 0.05  # judge: nor when the second best is this close
BACKGROUND_DIRT = 0.02  # judge: at most this share of the background (outside the shape grown by 3 px) may be foreground


def foreground(image: np.ndarray) -> np.ndarray:
    diff = np.abs(image.astype(np.int16) - np.array(world.BACKGROUND, dtype=np.int16)).max(axis=-1)
    return diff > FOREGROUND_THRESHOLD


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    return ~_erode(~mask)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def shape_scores(image: np.ndarray) -> dict:
    """IoU of the image's foreground with every world shape."""
    fg = foreground(image)
    return {s: iou(fg, world.mask(s)) for s in world.SHAPES}


def _nearest(pixels: np.ndarray, references: np.ndarray) -> np.ndarray:
    d = ((pixels[:, None, :].astype(np.float32) - references[None].astype(np.float32)) ** 2).sum(-1)
    return d.argmin(axis=1)


@lru_cache(maxsize=None)
def pattern_core(style: str) -> np.ndarray:
    """(SIZE, SIZE) bool: the pixels at least PATTERN_EDGE px inside their own region of the style's pattern."""
    labels = world.pattern(style).astype(bool)
    first, second = labels, ~labels
    for _ in range(PATTERN_EDGE):
        first, second = _erode(first), _erode(second)
    return first | second


def pattern_score(image: np.ndarray, style: str, colours) -> float:
    """Per class of the pattern, the fraction of its scored pixels (see the module's docstring) that take the colour the
    style puts there, averaged over the classes the shape shows (best of both assignments). Averaged per class, not
    per pixel: plaid and windows give one colour three quarters of the pixels, so a shape filled with either colour
    alone scored 0.87-0.90 per pixel, over the pass mark; per class it scores about 0.5."""
    inside = _erode(foreground(image)) & pattern_core(style)
    if not inside.any():
        return 0.0
    colours = [tuple(c) for c in colours]
    if len(colours) == 1:
        colours = colours * 2
    references = list(dict.fromkeys([*colours, *world.PALETTE.values(), world.BACKGROUND]))
    nearest = _nearest(image[inside], np.array(references))
    labels = world.pattern(style)[inside]
    first, second = references.index(colours[0]), references.index(colours[1])
    expected = np.where(labels == 0, first, second)
    swapped = np.where(labels == 0, second, first)
    classes = [labels == k for k in (0, 1) if (labels == k).any()]

    def agreement(hit):
        return float(np.mean([hit[c].mean() for c in classes]))

    return max(agreement(nearest == expected), agreement(nearest == swapped))


def style_scores(image: np.ndarray) -> dict:
    """Per world style: mean over its two pattern classes of the share of the class's most common palette colour."""
    inside = _erode(foreground(image))
    if inside.sum() < 16:
        return {s: 0.0 for s in world.STYLES}
    references = np.array(list(world.PALETTE.values()) + [world.BACKGROUND])
    snapped = _nearest(image[inside], references)
    out = {}
    for style in world.STYLES:
        labels = world.pattern(style)[inside]
        purities = []
        for k in (0, 1):
            members = snapped[labels == k]
            if len(members):
                purities.append(np.bincount(members).max() / len(members))
        out[style] = float(np.mean(purities))
    return out


def best(scores: dict) -> str:
    """The key with the highest score; the first listed wins ties (solid explains a one-colour image first)."""
    top = max(scores.values())
    return next(k for k, v in scores.items() if v >= top - 1e-9)


def score(image: np.ndarray, shape: str, style: str, colours) -> dict:
    """All scores of one image for the expected shape, style and colours (RGB triples).

    success: the closest world shape is the expected one and the pattern
    agreement is at least PATTERN_PASS (for the heart and the checkerboard:
    a checkered heart).
    """
    shapes = shape_scores(image)
    styles = style_scores(image)
    out = {
        "shape_iou": shapes[shape], "best_shape": best(shapes),
        "pattern": pattern_score(image, style, colours), "best_style": best(styles),
    }
    out["success"] = out["best_shape"] == shape and out["pattern"] >= PATTERN_PASS
    return out


def judge(image: np.ndarray, shape: str, style: str, colours) -> dict:
    """The mixing benchmark's verdict on one image: `score` plus reject, validity and leakage (module docstring)."""
    shapes = shape_scores(image)
    ranked = sorted(shapes.items(), key=lambda kv: -kv[1])
    (first, top), (_, second) = ranked[0], ranked[1]
    called = first if top >= REJECT_IOU and top - second >= REJECT_MARGIN else None
    grown = world.mask(called or shape)
    for _ in range(3):
        grown = _dilate(grown)
    fg = foreground(image)
    dirt = float(fg[~grown].mean())
    pattern = pattern_score(image, style, colours)
    inside = _erode(fg)
    style_colours = {tuple(c) for c in colours}
    others = [c for c in world.PALETTE.values() if tuple(c) not in style_colours]
    if inside.sum() >= 16:
        references = np.array([*style_colours, *others, world.BACKGROUND])
        nearest = _nearest(image[inside], references)
        content_leak = float(((nearest >= len(style_colours)) & (nearest < len(references) - 1)).mean())
    else:
        content_leak = 0.0
    out = {
        "called_shape": called, "shape_iou": shapes[shape], "best_iou": top, "margin": top - second, "pattern": pattern,
        "dirt": dirt, "valid": dirt <= BACKGROUND_DIRT, "content_leak": content_leak,
        "style_leak": max(shapes[s] for s in world.BASE_SHAPES),
    }
    out["success"] = called == shape and out["valid"] and pattern >= PATTERN_PASS
    return out
