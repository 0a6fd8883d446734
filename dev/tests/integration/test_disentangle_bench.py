"""The disentanglement benchmark's CPU-sized form (bench/disentangle.py --smoke): it runs end to end on the shipped
toy world, both methods, and writes a table that --combine rebuilds from the JSON."""

import json
import os
import subprocess
import sys

from devkit.host import DEV_ROOT, PACK_ROOT


def run(*args):
    return subprocess.run([sys.executable, os.path.join(DEV_ROOT, "bench", "disentangle.py"), *args], cwd=PACK_ROOT,
                          capture_output=True, text=True, timeout=900)


def test_smoke_run_scores_both_methods_and_combine_rebuilds_its_table(tmp_path):
    out = tmp_path / "smoke.json"
    done = run("--smoke", "--steps", "2", "--sampler-steps", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    (pair,) = results["pairs"]
    assert (pair["content"], pair["style"]) == ("heart", "checkerboard")
    for variant in ("qr_merge", "lora_merge", "qr_content_only", "qr_style_only"):
        v = pair[variant]
        assert 0 <= v["shape_iou"] <= 1 and 0 <= v["pattern"] <= 1 and v["success"] in (0.0, 1.0), (variant, v)
    assert 0 < pair["qr_delta_cosine"]["mean_abs"] <= 1 and 0 < pair["lora_delta_cosine_same_layers"]["mean_abs"] <= 1
    assert results["settings"]["steps"] == 2 and results["images_per_adapter"] == 4 and os.path.getsize(tmp_path / "smoke.png") > 0
    table = done.stdout[done.stdout.index("| content"):].strip()
    combined = run("--combine", str(out), str(out))
    assert combined.returncode == 0, combined.stderr[-3000:]
    rows = [line for line in table.splitlines() if line.startswith("| heart")]
    assert len(rows) == 4 and combined.stdout.count(rows[0]) == 2  # both files' rows, the same numbers
