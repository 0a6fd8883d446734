"""QR-LoRA speed bench: one command, one table of ratios measured in the same run, raw numbers to JSON.

    python bench/run.py --out bench/results/results.json          # FLUX.1-dev sizes on a GPU
    python bench/run.py --smoke                                   # small shapes on the CPU, a minute or two

Sections (see each module's docstring): basis (init + cache), files,
patch (ComfyUI ModelPatcher), train (one training step), memory
(training through the node's session on 24/16/12 GiB cards, bf16 and fp8),
scaling (data parallel training on 1, 2 and 4 GPUs, each count one torchrun launch). README.md
beside this file explains every row.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from devkit import host  # noqa: E402
from bench.flux import FULL, SMOKE, build_model  # noqa: E402

SECTIONS = ("basis", "files", "patch", "train", "memory", "scaling")


class Context:
    def __init__(self, args):
        self.args = args
        self.full = not args.smoke
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
        self.size = FULL if self.full else SMOKE
        self.rank = args.rank or (64 if self.full else 16)
        self.repeats = 3 if self.full else 1
        self.train_px = 512 if self.full else 64
        self.train_tokens = 512 if self.full else 16
        self.train_steps = 6 if self.full else 1
        self.train_rounds = 5 if self.full else 1  # step times vary by tens of percent between rounds on the H200
        self.scratch = args.scratch or tempfile.gettempdir()
        self.started = time.time()
        self.pack = None
        self._model = None

    def log(self, text: str) -> None:
        print(f"[{time.time() - self.started:7.1f}s] {text}", flush=True)

    def core(self, name: str):
        return host.module("qrlora_core." + name)

    def model(self):
        if self._model is None:
            self.log(f"building ComfyUI Flux ({self.size}) with random bf16 weights on {self.device}")
            self._model = build_model(self.size, self.device)
            n = sum(p.numel() for p in self._model.parameters())
            self.log(f"  {n / 1e9:.2f} B parameters")
        return self._model


def environment(ctx) -> dict:
    env = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
           "device": str(ctx.device), "full_size": ctx.full}
    if ctx.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(ctx.device)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(ctx.device).total_memory / 1024**3, 1)
    else:
        env["cpu"] = platform.processor() or platform.machine()
    try:
        import comfyui_version

        env["comfyui"] = comfyui_version.__version__
    except ImportError:
        pass
    return env


# ---------------------------------------------------------------- the table


def _ratio(a, b) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def _met(ok) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def table(results: dict) -> list[list[str]]:
    """Rows: what, measured, ratio, goal, met."""
    rows = []
    b = results.get("basis")
    if isinstance(b, dict) and "p1" in b:
        for tag, p in (("p0.5", "0.5"), ("p1", "1")):
            r = b[tag]
            ours, pub = r["ours"], r["published"]
            rows.append([f"basis init, {b['targets']} targets, r={b['rank']}, p={p}: published vs ours",
                         f"{pub['seconds_extrapolated']:.1f} s vs {ours['seconds']:.2f} s", f"{r['speedup']:.0f}x faster",
                         ">= 40x and < 5 s", _met(r["speedup"] >= 40 and ours["seconds"] < 5)])
            rows.append([f"subspace error (sin theta_max), p={p}: ours / published",
                         f"{ours['max_subspace_error']:.1e} / {pub['max_subspace_error']:.1e}",
                         f"{ours['max_subspace_error'] / 1e-3:.2f} of goal", "<= 1e-3", _met(ours["max_subspace_error"] <= 1e-3)])
        e = b.get("energy")
        if e:
            worst = min(r["ours"] - r["published"] for r in e.values())
            rows.append([f"basis energy captured (‖QᵀW‖² / top-r σ² sum), ours vs published float32 SVD ({', '.join(e)})",
                         "; ".join(f"{k} {r['ours']:.10f} vs {r['published']:.10f}" for k, r in e.items()),
                         f"worst ours - published {worst:+.1e}", ">= 0 on every spectrum", _met(worst >= -1e-12)])
        if "repeatable" in b:
            rows.append([f"basis repeatable: the same Q for the same weights on a second run ({b['targets']} targets)", str(b["repeatable"]),
                         "-", "True", _met(b["repeatable"])])
        c = b.get("cache", {})
        if c:
            rows.append(["basis cache: second get_or_build (load)", f"{c['warm_seconds']:.3f} s (first: {c['cold_seconds']:.2f} s)",
                         f"{c['warm_seconds']:.2f} of goal", "< 1 s", _met(c["warm_seconds"] < 1 and c["same_basis"])])
        d = b.get("diagnostics", {})
        if d:
            ours1 = b["p1"]["ours"]["seconds"]
            rows.append(["  (diagnostic) previous subspace code, p=1", f"{d['legacy_seconds_extrapolated']:.1f} s",
                         f"{d['legacy_seconds_extrapolated'] / ours1:.1f}x ours", "-", "n/a"])
            small = d.get("small_budget")
            if small:
                rows.append([f"  (diagnostic) ours with a {small['budget_bytes'] / 1024**3:g} GiB chunk budget, p=1",
                             f"{small['seconds']:.2f} s, working memory {small['peak_above_weights_bytes'] / 1024**3:.2f} GiB",
                             f"{small['seconds'] / ours1:.2f}x default", "-", "n/a"])
    p = results.get("patch")
    if isinstance(p, dict) and "host" in p:
        floor = p["floor"]["seconds"]
        for where in ("host", "device"):
            cases = p.get(where)
            if not cases:
                continue
            one_lora = cases["lora_1"]["total_s"]
            label = "adapters in host memory" if where == "host" else "adapters already on the GPU"
            rows.append([f"ModelPatcher, {label}: empty / noop patch / 1 plain LoRA (patch+unpatch)",
                         f"{cases['empty']['total_s'] * 1e3:.0f} / {cases['noop']['total_s'] * 1e3:.0f} / {one_lora * 1e3:.0f} ms", "-", "-", "n/a"])
            for k in (1, 2, 4, 8):
                q = cases[f"qrlora_{k}"]
                ratio = q["total_s"] / one_lora
                rows.append([f"  QR-LoRA mix k={k} vs 1 plain LoRA ({label})",
                             f"{q['total_s'] * 1e3:.0f} vs {one_lora * 1e3:.0f} ms (k LoRAs: {cases[f'lora_{k}']['total_s'] * 1e3:.0f})",
                             f"{ratio:.2f}", "<= 1.00", _met(ratio <= 1.0)])
            noop = cases["noop"]["patch_s"]
            rows.append([f"  ComfyUI's own per-weight float32 round trip (noop patch) vs memory floor ({label})",
                         f"{noop * 1e3:.1f} vs {floor * 1e3:.2f} ms", f"{noop / floor:.1f}x floor", "-", "n/a"])
            if "qrlora_1_pinned" in cases:
                rows.append([f"  (diagnostic) QR-LoRA k=1 from page-locked host memory ({label})",
                             f"{cases['qrlora_1_pinned']['total_s'] * 1e3:.0f} ms", f"{cases['qrlora_1_pinned']['total_s'] / one_lora:.2f}", "-", "n/a"])
            worst = max(cases[f"qrlora_{k}"]["patch_s"] for k in (1, 2, 4, 8))
            rows.append([f"  QR-LoRA patch (worst k) vs memory floor of the targets ({label})",
                         f"{worst * 1e3:.1f} vs {floor * 1e3:.2f} ms", f"{worst / floor:.1f}x floor", "<= 2x", _met(worst / floor <= 2)])
        direct = p["direct_addmm"]["seconds"]
        rows.append(["  our direct bf16 addmm (any k) vs memory floor", f"{direct * 1e3:.2f} vs {floor * 1e3:.2f} ms",
                     f"{direct / floor:.2f}x floor", "<= 2x", _met(direct / floor <= 2)])
        graph = p["direct_addmm"].get("graph_seconds")
        if graph:
            rows.append(["  the same addmms replayed as one CUDA graph", f"{graph * 1e3:.2f} vs {floor * 1e3:.2f} ms",
                         f"{graph / floor:.2f}x floor", "<= 2x", _met(graph / floor <= 2)])
    t = results.get("train")
    if isinstance(t, dict) and "qrlora" in t:
        q, l = t["qrlora"], t["lora"]
        rows.append(["  (check) QR-LoRA train module vs float64 reference", f"{t['layer_check_error']:.1e} of the delta", "-", "bf16 rounding", "n/a"])
        rows.append([f"training step {t['px']} px, through {t.get('path', 'the training layer')} ({t['blocks']['double']}+{t['blocks']['single']} blocks, r={t['rank']}): QR-LoRA vs LoRA time",
                     f"{q['step_s']:.3f} vs {l['step_s']:.3f} s", f"{q['step_s'] / l['step_s']:.3f}", "<= 1.05", _met(q["step_s"] / l["step_s"] <= 1.05)])
        rows.append(["  peak memory QR-LoRA vs LoRA (above model weights)",
                     f"{q['peak_bytes'] / 1024**3:.2f} vs {l['peak_bytes'] / 1024**3:.2f} GiB ({q['peak_above_weights_bytes'] / 1024**3:.2f} vs {l['peak_above_weights_bytes'] / 1024**3:.2f})",
                     _ratio(q["peak_bytes"], l["peak_bytes"]), "<= 1.00", _met(q["peak_bytes"] <= l["peak_bytes"] if l["peak_bytes"] else None)])
    s = results.get("scaling")
    if isinstance(s, dict) and "runs" in s:
        from bench import scaling

        rows += scaling.rows(s)
    f = results.get("files")
    if isinstance(f, dict) and "bytes" in f:
        s = f["bytes"]
        rows.append(["file size: compact vs plain LoRA (float32)", f"{s['compact'] / 1e6:.1f} vs {s['lora'] / 1e6:.1f} MB",
                     f"{s['compact'] / s['lora']:.3f}", "<= 0.5", _met(s["compact"] <= 0.5 * s["lora"])])
        rows.append(["  compact vs published format", f"{s['compact'] / 1e6:.1f} vs {s['published'] / 1e6:.1f} MB",
                     f"{s['compact'] / s['published']:.3f}", "<= 0.333", _met(s["compact"] * 3 <= s["published"])])
        rows.append(["  native / published / compact bf16 vs LoRA bf16",
                     f"{s['native'] / 1e6:.1f} / {s['published'] / 1e6:.1f} MB; {s['compact_bf16'] / 1e6:.1f} vs {s['lora_bf16'] / 1e6:.1f} MB",
                     f"{s['compact_bf16'] / s['lora_bf16']:.3f}", "-", "n/a"])
    m = results.get("memory")
    if isinstance(m, dict) and "rows" in m:
        from bench import small_cards

        rows += small_cards.table_rows(m)
    for name in SECTIONS:
        if isinstance(results.get(name), dict) and "error" in results[name]:
            rows.append([f"{name}: FAILED", results[name]["error"].splitlines()[-1][:80], "-", "-", "NOT met"])
    return rows


def render(rows, env) -> str:
    head = ["what", "measured", "ratio", "goal", "status"]
    lines = [f"{env.get('date')} · {env.get('gpu', env.get('cpu', '?'))} · torch {env.get('torch')} · ComfyUI {env.get('comfyui', '?')}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small shapes (CPU-sized); checks that every section runs")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    parser.add_argument("--out", default=None, help="JSON file for the raw numbers (default bench/results/results[-smoke].json)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--rank", type=int, default=None, help="adapter rank (default 64; 16 with --smoke)")
    parser.add_argument("--comfyui", default=None, help="ComfyUI source folder (default $QRLORA_COMFYUI or .comfyui/)")
    parser.add_argument("--scratch", default=None, help="folder for temporary files (default the system's temp dir)")
    parser.add_argument("--table-from", default=None, metavar="JSON", help="only print the table of an earlier run's JSON (measures nothing)")
    args = parser.parse_args(argv)
    if args.table_from:
        with open(args.table_from) as f:
            saved = json.load(f)
        print(render(table(saved), saved["environment"]))
        return 0
    ctx = Context(args)
    torch.set_float32_matmul_precision("highest")
    host.import_comfy(args.comfyui, cpu=ctx.device.type == "cpu", pinned_memory=False)  # the bench never offloads
    ctx.pack = host.module("integration.weight_adapter"), host.module("integration.keymap")  # without the node API (comfy_api, av, aiohttp)
    out = args.out or os.path.join(host.DEV_ROOT, "bench", "results", "results-smoke.json" if args.smoke else "results.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    env = environment(ctx)
    results = {"environment": env}
    ctx.log(f"bench on {env.get('gpu', env['device'])}, {'FLUX.1-dev sizes' if ctx.full else 'smoke sizes'}, rank {ctx.rank}")

    from bench import basis_init, files, patching, scaling, small_cards, training

    modules = {"basis": basis_init, "files": files, "patch": patching, "train": training, "memory": small_cards, "scaling": scaling}
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    for name in SECTIONS:
        if name not in wanted:
            continue
        start = time.time()
        try:
            results[name] = modules[name].run(ctx)
        except Exception:  # keep the other sections' numbers
            traceback.print_exc()
            results[name] = {"error": traceback.format_exc()}
        results.setdefault("section_seconds", {})[name] = time.time() - start
        with open(out, "w") as f:
            json.dump(results, f, indent=1, default=str)
    text = render(table(results), env)
    results["table"] = text
    with open(out, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print("\n" + text)
    print(f"\nraw numbers: {out}")
    return 1 if any(isinstance(results.get(s), dict) and "error" in results[s] for s in wanted) else 0


if __name__ == "__main__":
    sys.exit(main())
