"""Mix QR-LoRAs: model + rows of (file, on/off, strength, role) -> the mixed model and its trigger words.

One node for what takes Load QR-LoRA ×n, Merge ΔR and Apply to Model: the
enabled rows are loaded, mixed by qrlora_core.merge (weights = strengths)
and applied at strength 1, so the result equals those nodes bit for bit.

The rows travel as one JSON string (the `rows` input), which the page edits
through row widgets (web/mixer.js) and /prompt users write by hand:
[{"lora": "<file in loras>", "on": true, "strength": 1.0, "role": "content"}, ...]
"""

import json
from dataclasses import dataclass

from comfy_api.latest import io

from ..integration import files, reference
from ..integration.targets import apply
from ..qrlora_core.errors import AdapterError, clipped
from ..qrlora_core.merge import merge
from ..qrlora_core.metadata import trigger_words
from .adapter_socket import CATEGORY, STRENGTH_RANGE
from .merge import MAX_ADAPTERS

ROLES = ("content", "style", "other")  # also the order of the trigger words in the output
ROW_KEYS = {"lora", "on", "strength", "role"}
ROWS_FORM = '[{"lora": "<file in loras>", "on": true, "strength": 1.0, "role": "content"}, ...]'


@dataclass(frozen=True)
class Row:
    lora: str
    on: bool = True
    strength: float = 1.0
    role: str = "other"


def parse_rows(text: str) -> list[Row]:
    """The rows of the `rows` input, or an AdapterError whose one sentence says what is wrong and the form expected."""
    if not isinstance(text, str):  # /prompt may send a JSON list or number itself, not its text
        raise AdapterError(f"rows must be text holding JSON, not a {type(text).__name__}: write it as {ROWS_FORM}.")
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as e:
        raise AdapterError(f"rows is not JSON ({e.msg} at character {e.pos}): write it as {ROWS_FORM}.") from None
    except (ValueError, RecursionError):  # a number of thousands of digits, or lists nested thousands deep
        raise AdapterError(f"rows is not JSON a mixer can read (a number too long, or nesting too deep): write it as {ROWS_FORM}.") from None
    if not isinstance(data, list):
        raise AdapterError(f"rows must be a JSON list of rows, not {type(data).__name__}: write it as {ROWS_FORM}.")
    rows = []
    for n, item in enumerate(data, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("lora"), str):
            raise AdapterError(f"row {n} must be an object with a 'lora' file name: write rows as {ROWS_FORM}.")
        unknown = set(item) - ROW_KEYS
        on, strength, role = item.get("on", True), item.get("strength", 1.0), item.get("role", "other")
        if unknown:
            raise AdapterError(f"row {n} has keys a row does not take ({', '.join(sorted(unknown))}): a row has {', '.join(sorted(ROW_KEYS))}.")
        if not isinstance(on, bool):
            raise AdapterError(f"row {n}'s 'on' is {on!r}: write true or false.")
        # the range alone: it refuses NaN and infinity too, and compares an integer of any size exactly (isfinite overflows)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not STRENGTH_RANGE["min"] <= strength <= STRENGTH_RANGE["max"]:
            raise AdapterError(f"row {n}'s strength is {clipped(repr(strength))}: give a number from {STRENGTH_RANGE['min']:g} to {STRENGTH_RANGE['max']:g}.")
        if role not in ROLES:
            raise AdapterError(f"row {n}'s role is {role!r}: choose one of {', '.join(ROLES)}.")
        rows.append(Row(item["lora"], on, float(strength), role))
    turned_on = sum(row.on for row in rows)
    if turned_on > MAX_ADAPTERS:  # each row on loads its file: as many as Merge ΔR mixes
        raise AdapterError(f"{turned_on} rows are on, more than the {MAX_ADAPTERS} a mix takes: turn some off.")
    return rows


def mix_words(words_by_role: dict[str, list[str]]) -> str:
    """The enabled rows' trigger words, content first, then style, then other, each once."""
    return ", ".join(dict.fromkeys(w for role in ROLES for w in words_by_role.get(role, []) if w))


def fill_prompt(template: str, words_by_role: dict[str, list[str]]) -> str:
    """The template with {content}, {style} and {other} replaced by those rows' trigger words."""
    for role in ROLES:
        template = template.replace("{" + role + "}", ", ".join(w for w in words_by_role.get(role, []) if w))
    return template


class QRLoRAMixer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QRLoRAMixer",
            display_name="Mix QR-LoRAs",
            category=CATEGORY,
            is_output_node=True,  # an output: run (and its report shown) even when all of it comes from the cache
            description="Mixes QR-LoRA files from the loras folder into the model in one node: a row per adapter with an on/off "
                        "toggle, a strength and its role; the same ΔR sum and basis checks as Merge ΔR.",
            inputs=[
                io.Model.Input("model"),
                io.String.Input("rows", default="[]", tooltip=f"The rows as JSON (the page edits them for you): {ROWS_FORM}."),
                io.String.Input("prompt", default="", multiline=True, optional=True,
                                tooltip="A prompt with {content}, {style} and {other} where those rows' trigger words go."),
            ],
            outputs=[
                io.Model.Output(display_name="model"),
                io.String.Output(display_name="trigger_words", tooltip="The enabled rows' trigger words: content, style, then other."),
                io.String.Output(display_name="prompt", tooltip="The prompt input with the rows' trigger words filled in."),
            ],
        )

    @classmethod
    def validate_inputs(cls, rows):
        """Refuse at queue time (HTTP 400, shown on the node) rows that are not well formed or name no file in loras.

        Only `rows` is named: ComfyUI reports a refusal once for every input the check names.
        """
        try:
            for row in parse_rows(rows):
                if row.on:
                    files.adapter_path(row.lora)
        except AdapterError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, rows, model=None, prompt=None):
        """Run again whenever an enabled row's file (or the basis file it uses) changes."""
        return files.fingerprint([r.lora for r in parse_rows(rows) if r.on])

    @classmethod
    def execute(cls, model, rows, prompt="") -> io.NodeOutput:
        enabled = [r for r in parse_rows(rows) if r.on]
        adapters = files.load_fingerprinted([r.lora for r in enabled], lambda name: reference.q_and_r(model, name))
        words = {}
        for row, adapter in zip(enabled, adapters):
            words.setdefault(row.role, []).append(trigger_words(adapter))
        shown = [{"lora": r.lora, "role": r.role, "strength": r.strength, "trigger_words": trigger_words(a)} for r, a in zip(enabled, adapters)]
        if not adapters:
            patched, note = model, "No row is on: the model passes through unchanged."
        else:
            mixed, report = merge(adapters, [r.strength for r in enabled])
            patched, applied = apply(model, mixed, 1.0)
            note = report.text() + "\n" + applied
        text = mix_words(words)
        return io.NodeOutput(patched, text, fill_prompt(prompt or "", words),
                             ui={"text": [note], "qrlora_mix": [{"rows": shown, "trigger_words": text}]})
