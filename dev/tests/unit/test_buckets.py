"""Aspect-ratio buckets (qrlora_core/training/buckets.py): the scheme's rules, for many resolutions."""

import math

import torch

from comfyui_qrlora.qrlora_core.training.buckets import STEP, bucket_sizes, draw_batch, group_by_size, nearest_bucket


def test_buckets_follow_the_scheme_at_every_resolution():
    for resolution in range(STEP, 2048 + 1, STEP):
        sizes = bucket_sizes(resolution)
        assert (resolution, resolution) in sizes
        assert len(set(sizes)) == len(sizes) and all((h, w) in sizes for w, h in sizes), "portrait and landscape alike"
        lo, hi = max(STEP, resolution // 2 // STEP * STEP), 2 * resolution
        for w, h in sizes:
            assert w % STEP == 0 and h % STEP == 0
            assert w * h <= resolution * resolution
            assert lo <= w <= hi and lo <= h <= hi
            # as large as the area allows: given one side, one more step of the other would exceed R² (or 2R)
            grows = lambda a, b: a * (b + STEP) > resolution * resolution or b + STEP > hi
            assert grows(w, h) or grows(h, w), (resolution, w, h)


def test_buckets_at_512_are_kohyas():
    # sd-scripts make_bucket_resolutions((512, 512), min_size=256, max_size=1024, divisible=64)
    assert bucket_sizes(512) == sorted({
        (256, 1024), (256, 960), (256, 896), (256, 832), (320, 768), (320, 704), (384, 640), (448, 576), (512, 512),
        (1024, 256), (960, 256), (896, 256), (832, 256), (768, 320), (704, 320), (640, 384), (576, 448),
    })


def test_nearest_bucket_is_the_closest_aspect_ratio(rng):
    sizes = bucket_sizes(512)
    for _ in range(500):
        w, h = (int(v) for v in torch.randint(16, 4000, (2,), generator=rng))
        chosen = nearest_bucket(w, h, sizes)
        error = lambda b: abs(math.log(b[0] / b[1]) - math.log(w / h))
        assert error(chosen) == min(error(b) for b in sizes)
        assert nearest_bucket(h, w, sizes) == chosen[::-1], "a transposed image gets the transposed bucket"
    assert all(nearest_bucket(w, h, sizes) == (w, h) for w, h in sizes)
    assert nearest_bucket(1920, 1080, sizes) == (640, 384)


def test_batches_come_from_one_bucket_in_proportion_to_its_images(rng):
    shapes = [(4, 8, 8)] * 6 + [(4, 8, 24)] * 3 + [(4, 24, 8)] * 1
    groups = group_by_size(shapes)
    assert groups == [list(range(6)), [6, 7, 8], [9]]
    counts = [0, 0, 0]
    for _ in range(3000):
        batch = draw_batch(groups, 4, rng)
        where = [next(k for k, g in enumerate(groups) if i in g) for i in batch]
        assert len(set(where)) == 1 and len(set(batch)) == len(batch) == min(4, len(groups[where[0]]))
        counts[where[0]] += 1
    assert [round(c / 300) for c in counts] == [6, 3, 1], counts


def test_one_bucket_draws_exactly_what_randperm_draws():
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(20):
        assert draw_batch([list(range(7))], 3, a) == torch.randperm(7, generator=b)[:3].tolist()
