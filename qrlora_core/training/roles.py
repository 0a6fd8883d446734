"""Roles: what a content, a style or an 'all' adapter trains, per architecture (docs/roles.md).

A role names the blocks an adapter trains, in the block weights syntax
(qrlora_core/blocks.py: IN/MID/OUT for UNets, D/S for Flux and SD3, EARLY
and LATE for the first and second half of the blocks in model order); the
blocks with a weight other than 0 are trained. Within them the target
preset still picks the layers (attention + MLP, or attention only); a
custom target pattern replaces the role's blocks altogether.

Every entry says where it comes from and on what evidence: measured here,
published for that architecture, or extrapolated from either.
"""

from dataclasses import dataclass

from ..blocks import layer_weights
from ..errors import AdapterError

ALL, CONTENT, STYLE = "all", "content", "style"
ROLES = (ALL, CONTENT, STYLE)
ARCHITECTURES = {"sd15": "SD1.5", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}
MEASURED = "measured here"
PUBLISHED = "published"
EXTRAPOLATED = "extrapolated (nothing measured it on this architecture)"

_TOY_WORLD = ("the toy world (dev/toy_world: an SD1.5-architecture UNet), docs/mixing.md: picked with 400 training steps on two "
              "tuning pairs (dev/bench/reference/2026-12-06-rich-world-steps-tuning.json.xz); at rank 32, lr 2e-3, on 16 held-out "
              "pairs over 6 training seeds the mix drew 384 of 768, the paper's targets 138 of 384 (3 seeds), a plain LoRA on the "
              "paper's targets (rank 8) 382 of 768 (2026-12-07-rank32-2e-3-mixing.json.xz)")
_B_LORA = "B-LoRA (Frenkel et al., ECCV 2024), SDXL"
_PAPER = ("the paper's targets (QR-LoRA, Yang et al., ICCV 2025; Flux): every block; "
          "on the toy world's 16 held-out pairs a content and a style adapter so trained mixed 138 of 384 times at rank 32 (docs/mixing.md)")


@dataclass(frozen=True)
class RoleRecipe:
    """What one role trains on one architecture, and where that comes from."""

    blocks: str  # block weights syntax; blocks weighted other than 0 are trained
    source: str
    evidence: str  # MEASURED, PUBLISHED or EXTRAPOLATED


_EVERY_BLOCK = "*=1"
TABLE = {
    "sd15": {
        CONTENT: RoleRecipe("*=0, IN=1, MID=1", "down and middle blocks, where the layout is drawn; " + _TOY_WORLD, MEASURED),
        STYLE: RoleRecipe(_EVERY_BLOCK, "every block; " + _TOY_WORLD, MEASURED),
    },
    "sdxl": {  # up_blocks.0.attentions.0 / .1 are ComfyUI's output_blocks.0.1 / output_blocks.1.1
        CONTENT: RoleRecipe("*=0, OUT00=1", f"up_blocks.0.attentions.0 (ComfyUI output_blocks.0.1); {_B_LORA}", PUBLISHED),
        STYLE: RoleRecipe("*=0, OUT01=1", f"up_blocks.0.attentions.1 (ComfyUI output_blocks.1.1); {_B_LORA}", PUBLISHED),
    },
    "sd3": {
        CONTENT: RoleRecipe("*=0, EARLY=1", "the first half of the joint blocks by depth (D0-D11 of 24), as down + middle "
                            "are the UNet's first half; extrapolated from the toy world", EXTRAPOLATED),
        STYLE: RoleRecipe(_EVERY_BLOCK, "every block; extrapolated from the toy world", EXTRAPOLATED),
    },
    "flux": {
        CONTENT: RoleRecipe("*=0, EARLY=1", "the first half of the blocks by depth (D0-D18 and S0-S9 of 19 double + 38 single), "
                            "as down + middle are the UNet's first half; extrapolated from the toy world", EXTRAPOLATED),
        STYLE: RoleRecipe(_EVERY_BLOCK, "every block; extrapolated from the toy world", EXTRAPOLATED),
    },
}
PAPER_RECIPE = RoleRecipe(_EVERY_BLOCK, _PAPER, PUBLISHED)


def recipe(architecture: str | None, role: str) -> RoleRecipe:
    """The recipe of a role on an architecture ('sd15', 'sdxl', 'sd3', 'flux'; None for any other model)."""
    if role not in ROLES:
        raise AdapterError(f"'{role}' is not a role; choose one of: {', '.join(ROLES)}.")
    if role == ALL:
        return PAPER_RECIPE
    if architecture not in TABLE:
        raise AdapterError(
            f"The {role} role has blocks for {', '.join(ARCHITECTURES.values())} only (docs/roles.md), and this model is none of them: "
            "set the role to 'all' and pick the blocks with a custom target pattern."
        )
    return TABLE[architecture][role]


def role_layers(names: list[str], blocks: str) -> list[str]:
    """The names (in order) whose block the spec weights other than 0."""
    weights = layer_weights(blocks, names)
    return [n for n in names if weights[n] != 0]


def table_markdown() -> str:
    """The table as docs/roles.md shows it (its test keeps the two the same)."""
    rows = ["| architecture | role | blocks | source | evidence |", "|---|---|---|---|---|",
            f"| any | all | `{PAPER_RECIPE.blocks}` | {PAPER_RECIPE.source} | {PAPER_RECIPE.evidence} |"]
    for arch, entries in TABLE.items():
        for role, r in entries.items():
            rows.append(f"| {ARCHITECTURES[arch]} | {role} | `{r.blocks}` | {r.source} | {r.evidence} |")
    return "\n".join(rows)
