"""A folder of training images of mixed sizes with kohya-style captions, as people keep them.

`input/<folder>/NAME.png` with `NAME.txt` next to it holding the caption;
some images have no caption file (they take the default caption). Used by
the folder-training tests and by the demo's folder workflow.
"""

import os

FOLDER = "qrlora_folder"
# (file, width, height, caption or None): square, wide and tall images of uneven sizes
IMAGES = (
    ("dog_square.png", 160, 160, "a photo of a <c> dog on grass"),
    ("dog_wide.png", 300, 100, "a photo of a <c> dog running along a beach"),
    ("dog_tall.png", 100, 300, None),
    ("dog_close.jpg", 140, 128, None),
    ("dog_banner.webp", 310, 110, "a photo of a <c> dog asleep on a sofa"),
)
# bucket (width, height) -> images at resolution 128 (the tests' setting): 2:1 to 3:1 images share the 3:1 bucket
BUCKETS_AT_128 = {(128, 128): 2, (192, 64): 2, (64, 192): 1}


def _draw(name: str, width: int, height: int):
    """A brown 'dog' on grass under a sky, placed by the file name so every image differs."""
    from PIL import Image, ImageDraw

    seed = sum(map(ord, name))
    image = Image.new("RGB", (width, height), (150 + seed % 60, 200, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, height * 0.7, width, height], fill=(90, 160, 70))
    cx, cy, r = width * (0.3 + (seed % 40) / 100), height * 0.6, min(width, height) * 0.22
    draw.ellipse([cx - r, cy - r * 0.6, cx + r, cy + r * 0.6], fill=(140, 90, 50))
    draw.ellipse([cx + r * 0.6, cy - r * 1.2, cx + r * 1.3, cy - r * 0.3], fill=(140, 90, 50))
    return image


def write(input_dir: str, folder: str = FOLDER) -> str:
    """Write the folder (missing files only); returns its path."""
    path = os.path.join(input_dir, folder)
    os.makedirs(path, exist_ok=True)
    for name, width, height, caption in IMAGES:
        image_path = os.path.join(path, name)
        if not os.path.exists(image_path):
            _draw(name, width, height).save(image_path)
        if caption is not None:
            with open(os.path.splitext(image_path)[0] + ".txt", "w", encoding="utf-8") as f:
                f.write(caption + "\n")
    return path
