"""The example workflows' files: example_workflows/<title>.json with <title>.jpg beside it.

ComfyUI's template browser (frontend 1.32.9) knows a custom node pack's
templates by their file names alone: it shows the name as the card's title
and again, with '-' and '_' read as spaces, as its description (there is no
index or per-file field for packs). So each file is named by the title a
person reads, and code names each workflow by its key here.
"""

import os

from .host import PACK_ROOT

FOLDER = os.path.join(PACK_ROOT, "example_workflows")
# key -> title (the file name without .json / .jpg). No '-' or '_' (but URL_SAFE's): the card's description repeats
# the title with those read as spaces.
TITLES = {
    "qrlora_mix": "Mix-content-and-style-toy-model",  # URL_SAFE: `make demo` opens it by URL
    "qrlora_train_content": "Train a content adapter (toy model)",
    "qrlora_train_style": "Train a style adapter (toy model)",
    "qrlora_train_folder": "Train from a folder of any image sizes, with samples (toy model)",
    "qrlora_compare": "Compare two adapters layer by layer (toy model)",
    "flux_train_content": "FLUX.1 dev, train a content adapter",
    "flux_train_style": "FLUX.1 dev, train a style adapter",
    "flux_mix": "FLUX.1 dev, mix your content and style adapters",
    "sdxl_train_content": "SDXL, train a content adapter",
    "sdxl_train_style": "SDXL, train a style adapter",
    "sdxl_mix": "SDXL, mix your content and style adapters",
}
# The page's ?template= loader (what `make demo`'s URL uses) takes only names of [A-Za-z0-9_-] (frontend 1.32.9),
# so the one template it opens joins its words with '-': the card's description reads them as spaces.
URL_SAFE = ("qrlora_mix",)
TOY = tuple(k for k in TITLES if k.startswith("qrlora_"))  # run on the toy world's model as shipped
REAL = tuple(k for k in TITLES if k not in TOY)  # stock loaders with the usual file names of FLUX.1-dev and SDXL


def path(key: str, ext: str = ".json") -> str:
    return os.path.join(FOLDER, TITLES[key] + ext)
