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


def labelled_grid(images: torch.Tensor, row_labels: list[str], column_labels: list[str], title: list[str]) -> torch.Tensor:
    """images (rows·columns, H, W, 3) in [0, 1], row by row -> one IMAGE (1, H', W', 3) with the title's lines
    above, the column labels over the columns and the row labels left of the rows."""
    rows, columns = len(row_labels), len(column_labels)
    cells, height, width = images.shape[0], images.shape[1], images.shape[2]
    if cells != rows * columns:
        raise ValueError(f"{cells} images for a {rows} x {columns} grid")
    font = _font(height)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = measure.textbbox((0, 0), "Ag", font=font)[3] + GAP
    left = max(measure.textlength(t, font=font) for t in row_labels) + 2 * GAP
    top = (len(title) + 1) * line + GAP  # the title's lines, then the column labels
    title_width = max(measure.textlength(t, font=font) for t in title) + 2 * GAP
    canvas = Image.new("RGB", (int(max(left + columns * (width + GAP), title_width)), top + rows * (height + GAP)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(title):
        draw.text((GAP, GAP // 2 + i * line), text, fill=INK, font=font)
    for r in range(rows):
        draw.text((GAP, top + r * (height + GAP) + height // 2), row_labels[r], fill=INK, font=font, anchor="lm")
    for c in range(columns):
        draw.text((int(left) + c * (width + GAP) + width // 2, top - GAP), column_labels[c], fill=INK, font=font, anchor="mb")
    picture = torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)
    for i in range(cells):  # the cells' own values, not a rounded copy: a cell in the picture is the cell
        r, c = divmod(i, columns)
        y, x = top + r * (height + GAP), int(left) + c * (width + GAP)
        picture[y:y + height, x:x + width] = images[i].to(picture)
    return picture[None]
