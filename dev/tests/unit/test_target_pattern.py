"""Target patterns: the same answers as re.search on every pattern the pack and its workflows use, in time linear
in the name for the patterns that make re backtrack for hours, and one sentence for what the language leaves out."""

import glob
import json
import os
import re
import time

import pytest

from comfyui_qrlora.qrlora_core import AdapterError
from comfyui_qrlora.qrlora_core.training.config import TARGET_PRESETS
from comfyui_qrlora.qrlora_core.training.pattern import compile_pattern
from devkit import host

NAMES = [
    "transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.12.attn.to_out.0",
    "transformer.transformer_blocks.0.ff_context.net.0.proj", "transformer.single_transformer_blocks.3.proj_out",
    "transformer.proj_out", "transformer.transformer_blocks.1.attn.add_k_proj",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2",
    "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_out_0", "lora_unet_time_embedding_linear_1",
    "", "a", "aab", "ab{", "a{1", "x]y",
]
WRITTEN = [  # patterns of the tests, the toy world, the tooltip, and more of the language
    r"attn1?[._]to_q$", "to_q$", r"(attn\.to_q|proj_out)$", r"proj_out$", r"attn1?[._]to_[qkv]$",
    r"lora_unet_(down_blocks|mid_block).*(attn[12]_to_(q|k|v|out_0)|ff_net_(0_proj|2))$",
    r"^transformer", r"blocks\.\d+\.", r"blocks_\d{1,2}_", r"a{2}", r"a{0,2}b", r"a{,2}", r"o{1,}_", r"t{0}r", r"(ab)*", r"x*", r"^$",
    r"[^a-z]", r"\w+\.\w+$", r"\W\d", r"(?:to_q|to_k)+?", r"[._-]", r"\d{2,}", r"aaa{b", r"a{1", r"(a|)+$", r"(|a)", r"q$|^l",
    r"[]a]", r"[a\]]", r"\.0\.?", r"(?P<x>attn)\d", r"[\d_]+q", r"\S+_0$", r"(.*){3}x",
]


def patterns_in_use() -> list[str]:
    """The presets, the patterns written above, and every target_pattern in the example workflows and the toy world."""
    found = [p for p in TARGET_PRESETS.values() if p] + WRITTEN
    for path in glob.glob(os.path.join(host.PACK_ROOT, "example_workflows", "*.json")):
        with open(path) as f:
            nodes = json.load(f).get("nodes", [])
        for node in nodes:
            found += [v for v in node.get("widgets_values", []) if isinstance(v, str) and ("$" in v or "[" in v or "|" in v)]
    with open(os.path.join(host.DEV_ROOT, "toy_world", "adapters.py")) as f:
        toy = f.read()
    found += re.findall(r'"target_pattern": "([^"]+)"', toy)
    return found


@pytest.mark.parametrize("pattern", patterns_in_use())
def test_every_pattern_in_use_selects_what_re_search_selects(pattern):
    compiled = compile_pattern(pattern)
    assert [n for n in NAMES if compiled.search(n)] == [n for n in NAMES if re.search(pattern, n)]


@pytest.mark.parametrize("pattern", [r"(\w+)+!", r"^(([a-z_0-9.]+)+)+!$", r"(a|aa)*!", r"(.*){30}!", r"(x+x+)+y"])
def test_patterns_that_make_re_backtrack_take_linear_time(pattern):
    compiled = compile_pattern(pattern)
    names = [n * 4 for n in NAMES[:10]]  # up to 300 characters, where re would take longer than the universe exists
    started = time.perf_counter()
    assert not any(compiled.search(n) for n in names)
    seconds = time.perf_counter() - started
    print(f"{pattern}: {seconds:.3f} s for {len(names)} names")
    assert seconds < 2.0


@pytest.mark.parametrize("pattern, words", [
    (r"(a)\1", r"'\1' (a back-reference"), (r"(?=a)", "'(?=' (look-ahead)"), (r"(?<!a)b", "look-behind"), (r"(?i)a", "a flag"),
    (r"a*+", "possessive"), (r"\b", r"'\b'"), (r"a{99999}", "more than 1000 matching states"), ("attn(", "'(' is not closed"),
    ("a)", "closes no group"), ("*a", "repeats nothing"), ("[z-a]", "runs backwards"), ("x{5,2}", "maximum below its minimum"),
    ("a" * 1001, "more than 1000"), ("[ab", "'[' is not closed"),
])
def test_what_the_language_leaves_out_is_refused_in_one_sentence(pattern, words):
    with pytest.raises(AdapterError) as refused:
        compile_pattern(pattern)
    text = str(refused.value)
    assert words in text and text.count(". ") == 0 and text.endswith("."), text


@pytest.mark.parametrize("pattern", ["attn{²}", "a{1,²}", "a{²,}", "a{٣}"])
def test_a_count_of_other_digits_is_literal_text_as_in_re(pattern):
    """'²'.isdigit() is True but int() refuses it, and int('٣') is 3: re reads only 0-9 as a count."""
    names = NAMES + ["attn{²}", "a{1,²}", "a{²,}", "a{٣}", "aaa"]
    compiled = compile_pattern(pattern)
    assert [n for n in names if compiled.search(n)] == [n for n in names if re.search(pattern, n)]
