"""A dev-only node for the test server: a small Flux or SDXL (MODEL, CLIP, VAE) built in the server's process.

The stock loaders cannot read a small Flux or SDXL from a file (they fix sizes
such a file lacks: /work/shared/HOST.md, devkit/models.py), so the tests run
the Flux and SDXL example workflows with their loader nodes replaced by this
one (tests/integration/test_workflows.py says exactly which). The test server
links this file into custom_nodes/ (devkit/server.make_base_directory); the
pack never imports it and a published pack does not carry it (.comfyignore: dev/).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # dev/ (this file is linked into custom_nodes/)

from devkit import models  # noqa: E402


class DevSmallCheckpoint:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": (["flux", "sdxl"],), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "_for_testing"

    def load(self, arch, seed):
        return models.small_checkpoint(arch, seed)


NODE_CLASS_MAPPINGS = {"DevSmallCheckpoint": DevSmallCheckpoint}
