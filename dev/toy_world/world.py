"""The toy world (issue 12): flat shapes filled with patterns, rendered exactly, seeded.

Every image is 128x128 RGB on a flat (230, 230, 230) background with one
filled shape centred on the canvas, fitting an 80x80 box, filled in a style:
two colours from the palette laid out by a pattern. The base model sees
only BASE_SHAPES x BASE_STYLES; the heart and the checkerboard are held out
for the adapters (and, for the benchmarks only, the star and concentric rings
and MIXING_SHAPES x MIXING_STYLES).

Rendering is pure numpy: the shape's coverage of each pixel is measured on
a 4x4 grid of sub-samples (anti-aliased edges), the pattern is read at the
pixel's integer coordinates (x right, y down, both from the top-left
corner), so one (shape, style, colours) always gives the same bytes.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SIZE = 128
BOX = 80
BACKGROUND = (230, 230, 230)
PALETTE = {
    "red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (240, 200, 30),
    "purple": (130, 60, 180), "orange": (245, 130, 30), "black": (20, 20, 20),
}
BASE_SHAPES = (
    "circle", "square", "triangle", "diamond", "cross", "ring", "pentagon", "hexagon", "octagon", "ellipse", "semicircle",
    "trapezoid", "parallelogram", "kite", "chevron", "frame", "saltire", "right triangle", "inverted triangle",
    "wide rectangle", "tall rectangle", "letter L",
)
BASE_STYLES = (
    "solid", "horizontal stripes", "vertical stripes", "diagonal stripes", "reverse diagonal stripes", "dots", "big dots",
    "wide stripes", "zigzag", "waves", "halves",
)
BASE_COLOUR_PAIRS = 12  # ordered colour pairs per (shape, patterned style) in the base world, drawn by base_items' seed
HELD_OUT_SHAPE = "heart"
HELD_OUT_STYLE = "checkerboard"
CHECKER_COLOURS = ((20, 20, 20), (240, 200, 30))  # black and yellow of the palette
# Held out for the disentanglement benchmark only (not in the world; the base model never sees them).
BENCH_SHAPES = (HELD_OUT_SHAPE, "star")
BENCH_STYLES = (HELD_OUT_STYLE, "concentric rings")
# Held out for the mixing benchmark (bench/mixing.py, issue 26); the base model never sees them either.
MIXING_SHAPES = ("crescent", "arrow", "hourglass", "tee")
MIXING_STYLES = ("bricks", "harlequin", "windows", "plaid")
# A second style for the mixing bench's tuning pairs only (bench/mixing.py TUNING_PAIRS; never a test pair): until
# 2026-12-06 both tuning pairs were checkerboard pairs, so every pick was ranked by one style; then both were crosses
# pairs, until session 21 paired crosses with checkerboard.
TUNING_STYLES = ("crosses",)
FIXED_COLOURS = {
    HELD_OUT_STYLE: CHECKER_COLOURS, "concentric rings": ((40, 80, 220), (245, 130, 30)),
    "bricks": ((220, 40, 40), (40, 80, 220)), "harlequin": ((40, 160, 60), (130, 60, 180)),
    "windows": ((245, 130, 30), (40, 80, 220)),
    "plaid": ((20, 20, 20), (40, 160, 60)), "crosses": ((40, 80, 220), (240, 200, 30)),
}
SHAPES = BASE_SHAPES + BENCH_SHAPES + MIXING_SHAPES
STYLES = BASE_STYLES + BENCH_STYLES + MIXING_STYLES + TUNING_STYLES
PERIOD, BAND = 16, 8  # stripes, checker squares and rings: 8 px bands, 16 px period
DOT_RADIUS = 3
SUBSAMPLES = 4


@dataclass(frozen=True)
class Item:
    """One image of the world: a shape, a style and the style's colours (one for solid, two otherwise)."""

    shape: str
    style: str
    colours: tuple  # palette names, or RGB triples for the fixed-colour held-out styles

    def rgb(self) -> list:
        return [PALETTE[c] if isinstance(c, str) else tuple(c) for c in self.colours]

    def caption(self, with_colours: bool = True, noun: str | None = None) -> str:
        """'a red and blue circle in horizontal stripes style' (colours only where they have names; `noun` in place of the shape)."""
        named = [c for c in self.colours if isinstance(c, str)]
        words = " and ".join(named) + " " if with_colours and named else ""
        noun = words + (noun or self.shape)
        return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun} in {self.style} style"


# ------------------------------------------------------------------ shapes


def _polygon_inside(px: np.ndarray, py: np.ndarray, vx: np.ndarray, vy: np.ndarray) -> np.ndarray:
    """Even-odd rule: is each point (px, py) inside the closed polygon (vx, vy)?"""
    inside = np.zeros(px.shape, dtype=bool)
    x2, y2 = np.roll(vx, 1), np.roll(vy, 1)
    for ax, ay, bx, by in zip(vx, vy, x2, y2):
        crosses = (ay > py) != (by > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = ax + (py - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (px < at)
    return inside


def _fit_box(vx: np.ndarray, vy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale a polygon (y down) to fit the 80x80 box and centre its bounding box on the canvas."""
    scale = BOX / max(vx.max() - vx.min(), vy.max() - vy.min())
    cx, cy = (vx.max() + vx.min()) / 2, (vy.max() + vy.min()) / 2
    return (vx - cx) * scale + SIZE / 2, (vy - cy) * scale + SIZE / 2


def heart_outline(points: int = 720) -> tuple[np.ndarray, np.ndarray]:
    """x = 16 sin³t, y = 13 cos t − 5 cos 2t − 2 cos 3t − cos 4t, apex down (image y = −y), fitted to the box."""
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return _fit_box(x, -y)


def star_outline() -> tuple[np.ndarray, np.ndarray]:
    """A five-pointed star, one point up, inner radius 0.45 of the outer, fitted to the box."""
    k = np.arange(10)
    radius = np.where(k % 2 == 0, 1.0, 0.45)
    angle = -np.pi / 2 + k * np.pi / 5
    return _fit_box(radius * np.cos(angle), radius * np.sin(angle))


def _regular(sides: int) -> tuple:
    """A regular polygon, one vertex up."""
    angle = -np.pi / 2 + 2 * np.pi * np.arange(sides) / sides
    return tuple(zip(np.cos(angle), np.sin(angle)))


# Shapes as polygons (x right, y down), each fitted to the box by _fit_box: base shapes, then the mixing benchmark's.
POLYGONS = {
    "pentagon": _regular(5), "hexagon": _regular(6), "octagon": _regular(8),
    "semicircle": tuple(zip(np.cos(np.linspace(np.pi, 2 * np.pi, 91)), np.sin(np.linspace(np.pi, 2 * np.pi, 91)))),  # flat side down
    "trapezoid": ((-0.5, -1), (0.5, -1), (1, 1), (-1, 1)),
    "parallelogram": ((-0.4, -1), (1, -1), (0.4, 1), (-1, 1)),
    "kite": ((0, -1), (0.6, -0.4), (0, 1), (-0.6, -0.4)),
    "chevron": ((0, -1), (1, 0.2), (1, 1), (0, -0.2), (-1, 1), (-1, 0.2)),  # pointing up
    "right triangle": ((-1, -1), (1, 1), (-1, 1)),
    "letter L": ((-1, -1), (-0.35, -1), (-0.35, 0.4), (1, 0.4), (1, 1), (-1, 1)),
    "arrow": ((-1, -0.3), (0.1, -0.3), (0.1, -0.9), (1, 0), (0.1, 0.9), (0.1, 0.3), (-1, 0.3)),  # pointing right
    "hourglass": ((-1, -1), (1, -1), (0.2, 0), (1, 1), (-1, 1), (-0.2, 0)),
    "tee": ((-1, -1), (1, -1), (1, -0.45), (0.3, -0.45), (0.3, 1), (-0.3, 1), (-0.3, -0.45), (-1, -0.45)),
}


def crescent_outline(points: int = 360) -> tuple[np.ndarray, np.ndarray]:
    """A disc less a disc of radius 0.8 shifted right by 0.55 (horns to the right), fitted to the box."""
    outer, inner, shift = 1.0, 0.8, 0.55
    # where the circles cross: x² + y² = 1 and (x - shift)² + y² = inner²
    cx = (outer**2 - inner**2 + shift**2) / (2 * shift)
    top = np.arctan2(np.sqrt(outer**2 - cx**2), cx)
    a = np.linspace(top, 2 * np.pi - top, points)
    inner_top = np.arctan2(np.sqrt(outer**2 - cx**2), cx - shift)
    b = np.linspace(2 * np.pi - inner_top, inner_top, points)
    return _fit_box(np.concatenate([outer * np.cos(a), shift + inner * np.cos(b)]),
                    np.concatenate([outer * np.sin(a), inner * np.sin(b)]))


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x, y in pixels (y down); the box is [24, 104] on both axes."""
    u, v = (x - SIZE / 2) / (BOX / 2), (y - SIZE / 2) / (BOX / 2)  # the box is [-1, 1]^2
    r = np.hypot(u, v)
    if shape == "circle":
        return r <= 1
    if shape == "square":
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "triangle":  # apex (0, -1), base from (-1, 1) to (1, 1)
        return (v <= 1) & (np.abs(u) <= (v + 1) / 2)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    if shape == "cross":  # arms a third of the box wide
        return ((np.abs(u) <= 1 / 3) & (np.abs(v) <= 1)) | ((np.abs(v) <= 1 / 3) & (np.abs(u) <= 1))
    if shape == "ring":
        return (r <= 1) & (r >= 0.55)
    if shape == "ellipse":
        return np.hypot(u, v / 0.6) <= 1
    if shape == "frame":  # a square less a square of 0.55 its side
        return (np.maximum(np.abs(u), np.abs(v)) <= 1) & (np.maximum(np.abs(u), np.abs(v)) >= 0.55)
    if shape == "saltire":  # a diagonal cross, arms 0.45 of the box wide across the diagonal
        return (np.abs(u) <= 1) & (np.abs(v) <= 1) & ((np.abs(u - v) <= 0.45) | (np.abs(u + v) <= 0.45))
    if shape == "inverted triangle":  # apex (0, 1)
        return (v >= -1) & (np.abs(u) <= (1 - v) / 2)
    if shape == "wide rectangle":
        return (np.abs(u) <= 1) & (np.abs(v) <= 0.5)
    if shape == "tall rectangle":
        return (np.abs(u) <= 0.5) & (np.abs(v) <= 1)
    if shape == "heart":
        return _polygon_inside(x, y, *heart_outline())
    if shape == "star":
        return _polygon_inside(x, y, *star_outline())
    if shape == "crescent":
        return _polygon_inside(x, y, *crescent_outline())
    if shape in POLYGONS:
        vx, vy = (np.array(v, dtype=np.float64) for v in zip(*POLYGONS[shape]))
        return _polygon_inside(x, y, *_fit_box(vx, vy))
    raise ValueError(f"unknown shape {shape!r}; the world's shapes are {', '.join(SHAPES)}")


@lru_cache(maxsize=None)
def coverage(shape: str) -> np.ndarray:
    """(SIZE, SIZE) float32 in [0, 1]: the fraction of each pixel the shape covers (4x4 sub-samples)."""
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    total = np.zeros((SIZE, SIZE), dtype=np.float64)
    for oy in offsets:
        for ox in offsets:
            total += _inside(shape, xs + ox, ys + oy)
    out = (total / SUBSAMPLES**2).astype(np.float32)
    out.setflags(write=False)
    return out


def mask(shape: str) -> np.ndarray:
    """Pixels at least half covered by the shape."""
    return coverage(shape) >= 0.5


# ------------------------------------------------------------------ styles


@lru_cache(maxsize=None)
def pattern(style: str) -> np.ndarray:
    """(SIZE, SIZE) 0/1: which of the style's two colours each pixel takes (0 = first; solid is all 0)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    if style == "solid":
        out = np.zeros((SIZE, SIZE), dtype=np.int64)
    elif style == "horizontal stripes":
        out = (y // BAND) % 2
    elif style == "vertical stripes":
        out = (x // BAND) % 2
    elif style == "diagonal stripes":  # bands of x + y: a 16 px period along each axis
        out = ((x + y) // BAND) % 2
    elif style == "reverse diagonal stripes":  # bands of x - y
        out = ((x - y + SIZE) // BAND) % 2
    elif style == "dots":  # second colour: dots of radius 3 centred on a 16 px grid (8, 8), (8, 24), ...
        dx = (x % PERIOD) + 0.5 - PERIOD / 2
        dy = (y % PERIOD) + 0.5 - PERIOD / 2
        out = (np.hypot(dx, dy) <= DOT_RADIUS).astype(np.int64)
    elif style == "big dots":  # dots of radius 6 centred on a 32 px grid (16, 16), (16, 48), ...
        dx = (x % (2 * PERIOD)) + 0.5 - PERIOD
        dy = (y % (2 * PERIOD)) + 0.5 - PERIOD
        out = (np.hypot(dx, dy) <= 2 * DOT_RADIUS).astype(np.int64)
    elif style == "wide stripes":  # horizontal, 16 px bands
        out = (y // PERIOD) % 2
    elif style == "zigzag":  # 8 px horizontal bands bent by a triangle wave of 16 px height and 32 px period
        out = ((y + np.abs((x + PERIOD) % (2 * PERIOD) - PERIOD)) // BAND) % 2
    elif style == "waves":  # 8 px horizontal bands bent by a sine of 4 px amplitude and 32 px period
        out = ((y + np.rint(4 * np.sin(2 * np.pi * x / (2 * PERIOD))).astype(np.int64)) // BAND) % 2
    elif style == "halves":  # the left half the first colour, the right half the second
        out = (x >= SIZE // 2).astype(np.int64)
    elif style == "checkerboard":  # 8 px squares, the top-left one the first colour
        out = (x // BAND + y // BAND) % 2
    elif style == "concentric rings":  # 8 px rings around the canvas centre
        out = (np.hypot(x + 0.5 - SIZE / 2, y + 0.5 - SIZE / 2) // BAND).astype(np.int64) % 2
    elif style == "bricks":  # 16x8 cells, each row shifted by half a cell
        out = ((x + BAND * ((y // BAND) % 2)) // PERIOD) % 2
    elif style == "harlequin":  # a checkerboard turned 45 degrees: diamonds of diagonal 16 px
        out = ((x + y) // PERIOD + (x - y + SIZE) // PERIOD) % 2
    elif style == "windows":  # 8 px squares of the second colour on a 16 px grid
        out = ((x // BAND) % 2) & ((y // BAND) % 2)
    elif style == "plaid":  # 8 px horizontal and vertical bands of the second colour on a 16 px grid
        out = ((x // BAND) % 2) | ((y // BAND) % 2)
    elif style == "crosses":  # second colour: plus signs 5 px wide and 13 px long centred on a 16 px grid (8, 8), (8, 24), ...
        dx, dy = np.abs(x % PERIOD - PERIOD // 2), np.abs(y % PERIOD - PERIOD // 2)
        out = (((dx <= 2) & (dy <= 6)) | ((dy <= 2) & (dx <= 6))).astype(np.int64)
    else:
        raise ValueError(f"unknown style {style!r}; the world's styles are {', '.join(STYLES)}")
    out = out.astype(np.uint8)
    out.setflags(write=False)
    return out


def render(item: Item) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 RGB."""
    colours = np.array(item.rgb(), dtype=np.float32)
    if len(colours) == 1:
        colours = np.repeat(colours, 2, axis=0)
    fill = colours[pattern(item.style)]
    alpha = coverage(item.shape)[..., None]
    image = alpha * fill + (1 - alpha) * np.array(BACKGROUND, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ sampling


def random_item(rng: np.random.Generator, shapes=BASE_SHAPES, styles=BASE_STYLES) -> Item:
    shape = shapes[rng.integers(len(shapes))]
    style = styles[rng.integers(len(styles))]
    if style in FIXED_COLOURS:
        return Item(shape, style, FIXED_COLOURS[style])
    names = list(PALETTE)
    if style == "solid":
        return Item(shape, style, (names[rng.integers(len(names))],))
    first, second = rng.choice(len(names), size=2, replace=False)
    return Item(shape, style, (names[first], names[second]))


def sample(seed: int, count: int, shapes=BASE_SHAPES, styles=BASE_STYLES, colour_words: float = 0.7):
    """`count` (item, caption) pairs drawn from shapes x styles x colours, the same for the same seed.

    A caption names the colours with probability `colour_words`, so prompts
    without colours ("a circle in dots style") are in the training data too.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        item = random_item(rng, shapes, styles)
        out.append((item, item.caption(with_colours=bool(rng.random() < colour_words))))
    return out


def base_items():
    """The base model's whole world: each base shape in each colour solid, and in each patterned base style in
    BASE_COLOUR_PAIRS ordered colour pairs (the same pairs on every machine: a fixed seed)."""
    names = list(PALETTE)
    pairs = [(a, b) for a in names for b in names if a != b]
    rng = np.random.default_rng(12)
    for shape in BASE_SHAPES:
        for style in BASE_STYLES:
            if style == "solid":
                for c in names:
                    yield Item(shape, style, (c,))
            else:
                for k in rng.choice(len(pairs), size=BASE_COLOUR_PAIRS, replace=False):
                    yield Item(shape, style, pairs[k])
