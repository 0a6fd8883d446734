"""Aspect-ratio buckets: mixed image sizes trained at about one resolution.

The scheme is kohya's (sd-scripts `make_bucket_resolutions`), scaled to the
training resolution R: every bucket is w x h with w and h multiples of 64,
w·h ≤ R², sides between R/2 and 2R (at least 64), plus the square R x R.
An image goes to the bucket whose aspect ratio is closest to its own
(compared as log(w/h), so a 2:1 and a 1:2 image are treated alike), is
scaled to cover the bucket and centre-cropped to it. Batches are drawn
within one bucket, so a batch is one tensor of one size.
"""

import math

from ..errors import AdapterError

STEP = 64  # bucket sides are multiples of this (the latent grid of every supported model divides it)
MAX_RESOLUTION = 4096  # the Training Data node's widget and train.py --resolution: larger images than any model here trains on


def check_resolution(resolution: int) -> None:
    """The node's widget holds the range; train.py --resolution does not, and a huge one is memory spent on resizing."""
    if not STEP <= resolution <= MAX_RESOLUTION:
        raise AdapterError(f"The training resolution {resolution} is outside {STEP} to {MAX_RESOLUTION}: choose one in that range "
                           "(512 for SD1.5, 1024 for SDXL, SD3 and Flux).")


def bucket_sizes(resolution: int, step: int = STEP) -> list[tuple[int, int]]:
    """All (width, height) buckets for a training resolution, sorted."""
    side = max(step, resolution // step * step)
    area = side * side
    smallest = max(step, resolution // 2 // step * step)
    largest = max(side, 2 * resolution // step * step)
    sizes = {(side, side)}
    for width in range(smallest, largest + 1, step):
        height = min(largest, area // width // step * step)
        if height >= smallest:
            sizes.add((width, height))
            sizes.add((height, width))
    return sorted(sizes)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to width/height (ties: the larger bucket)."""
    if width < 1 or height < 1:
        raise ValueError(f"an image of {width} x {height} pixels has no aspect ratio")
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1], b))


def group_by_size(shapes: list[tuple]) -> list[list[int]]:
    """Indices of equal shapes, grouped, in order of first appearance (one group per bucket)."""
    groups: dict = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    return list(groups.values())


def describe_buckets(groups: list[list[int]], shapes: list[tuple]) -> str:
    """'5 images in 3 buckets (latent width x height: images): 16x16: 2, 24x8: 2, 8x24: 1'."""
    sizes = ", ".join(f"{shapes[g[0]][-1]}x{shapes[g[0]][-2]}: {len(g)}" for g in groups)
    return f"{len(shapes)} images in {len(groups)} buckets (latent width x height: images): {sizes}"


def draw_batch(groups: list[list[int]], batch_size: int, generator) -> list[int]:
    """A batch of up to `batch_size` indices from one group.

    The group is the one of an image drawn uniformly from all images, so
    each bucket is trained in proportion to how many images it holds. With
    a single group this is exactly `randperm(n)[:batch_size]` on the same
    generator (the draws of a run with one image size do not change).
    """
    import torch

    if len(groups) == 1:
        group = groups[0]
    else:
        total = sum(len(g) for g in groups)
        pick = int(torch.randint(total, (1,), generator=generator))
        for group in groups:
            if pick < len(group):
                break
            pick -= len(group)
    order = torch.randperm(len(group), generator=generator)[:batch_size].tolist()
    return [group[j] for j in order]
