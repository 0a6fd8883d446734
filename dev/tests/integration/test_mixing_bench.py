"""The mixing benchmark's CPU-sized form (dev/bench/mixing.py --smoke): every arm, trained by the Train QR-LoRA node,
mixed, sampled and judged end to end on one held-out pair, written in the issue's JSON layout with a gallery."""

import json
import os
import subprocess
import sys

import pytest

from bench import mixing
from devkit.host import DEV_ROOT, PACK_ROOT


def test_wilson_interval_matches_the_textbook_values():
    assert mixing.wilson(0, 24)[0] == pytest.approx(0) and mixing.wilson(0, 24)[1] == pytest.approx(0.1380, abs=1e-4)
    assert mixing.wilson(24, 24)[0] == pytest.approx(0.8620, abs=1e-4) and mixing.wilson(24, 24)[1] == pytest.approx(1)
    assert mixing.wilson(10, 20) == pytest.approx([0.2993, 0.7007], abs=1e-4)


@pytest.mark.timeout(900)
def test_smoke_run_judges_every_arm_and_writes_the_summary_the_issue_asks_for(tmp_path):
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, os.path.join(DEV_ROOT, "bench", "mixing.py"), "--smoke", "--steps", "1", "--sampler-steps", "2",
                           "--out", str(out)], cwd=PACK_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["held_out_pairs"] == [list(mixing.world.MIXING_SHAPES[:1] + mixing.world.MIXING_STYLES[:1])]
    assert results["tuning_pairs"] == [list(p) for p in mixing.TUNING_PAIRS]
    assert not {s for p in results["tuning_pairs"] for s in p} & set(mixing.TEST_SHAPES + mixing.TEST_STYLES), "tuning and test pairs share nothing"
    assert set(results["summary"]) == set(mixing.ARMS)
    for arm, row in results["summary"].items():
        lo, hi = row["ci95"]
        assert 0 <= lo <= row["success"] <= hi <= 1 and row["trials"] == 2, (arm, row)
        assert row["training_seeds"] == [0] and row["sampler_seeds"] == [0, 1]
        assert (row["alone_content"] is None) == (arm == "oracle") and (row["alone_style"] is None) == (arm == "oracle")
    (pair,) = results["pairs"]
    assert pair["codec"]["success"], "the world's codec carries the pair's ideal image"
    plain = {t["kind"] for t in results["trainings"].values() if t["settings"].get("plain_lora")}
    assert plain == {"content", "style"}, "the lora arms train plain LoRAs with the pack's trainer"
    assert os.path.getsize(tmp_path / "smoke.png") > 0
    assert "| default |" in done.stdout
