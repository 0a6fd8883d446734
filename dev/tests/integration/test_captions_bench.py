"""The captions benchmark's CPU-sized form (dev/bench/captions.py --smoke): the toy world trained through TrainingSession
with a caption per image runs one forward of the model per step, as with one caption for all."""

import json
import os
import subprocess
import sys

import pytest

from devkit.host import DEV_ROOT


@pytest.mark.timeout(600)
def test_a_caption_per_image_trains_in_one_forward_per_step(tmp_path):
    out = tmp_path / "captions.json"
    done = subprocess.run([sys.executable, os.path.join(DEV_ROOT, "bench", "captions.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["forwards_per_step"] == {"per image": 1, "one for all": 1}
    assert all(len(t) == result["steps"] * result["rounds"] and min(t) > 0 for t in result["step_seconds"].values())
    assert result["per_image_over_one_for_all"] == pytest.approx(
        result["median_step_seconds"]["per image"] / result["median_step_seconds"]["one for all"])
