"""The grid as one labelled picture: cells in rows and columns, each row's and column's weight beside it,
the axes named above, the way the paper shows its mixes."""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
GAP = 4  # pixels between cells


def _font(cell_height: int):
    """Pillow's own scalable font (no file to find), sized to the cells so labels stay readable beside them."""
    return ImageFont.load_default(size=max(12, cell_height // 10))


def labelled_grid(images: torch.Tensor, row_labels: list[str], column_labels: list[str], title: str) -> torch.Tensor:
    """images (rows·columns, H, W, 3) in [0, 1], row by row -> one IMAGE (1, H', W', 3) with the labels drawn."""
    rows, columns = len(row_labels), len(column_labels)
    cells, height, width = images.shape[0], images.shape[1], images.shape[2]
    if cells != rows * columns:
        raise ValueError(f"{cells} images for a {rows} x {columns} grid")
    font = _font(height)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = measure.textbbox((0, 0), "Ag", font=font)[3] + GAP
    left = max(measure.textlength(t, font=font) for t in row_labels) + 2 * GAP
    top = 2 * line + GAP  # the title, then the column labels
    canvas = Image.new("RGB", (int(left) + columns * (width + GAP), top + rows * (height + GAP)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, GAP // 2), title, fill=INK, font=font)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    for r in range(rows):
        y = top + r * (height + GAP)
        draw.text((GAP, y + height // 2), row_labels[r], fill=INK, font=font, anchor="lm")
        for c in range(columns):
            x = int(left) + c * (width + GAP)
            if r == 0:
                draw.text((x + width // 2, top - GAP), column_labels[c], fill=INK, font=font, anchor="mb")
            canvas.paste(Image.fromarray(pixels[r * columns + c]), (x, y))
    return torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)[None]
