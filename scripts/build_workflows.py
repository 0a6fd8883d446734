"""Writes the example workflows (workflows/*.json) with the real server and page.

Each workflow is described below as groups of nodes (with titles a person
can follow) and links. This script turns that into the page's own format:
it asks /object_info for every node's inputs, outputs and widget order,
loads the draft into the ComfyUI page (headless Chromium), lets the page
size and place the nodes, draws the groups around them, and saves what the
page serializes, so the files are exactly what ComfyUI itself would save.
example_workflows/ (what ComfyUI's template browser reads) gets the same
bytes. The demo and the test suite read workflows/*.json; run this script
again after changing a workflow here: `make workflows`.

QRLoRATrain is built on another branch; until the server knows it, its
planned interface (PLANNED below) stands in, and the page keeps the node
as it does any missing node.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devkit import browser, demo_assets, folder_dataset  # noqa: E402
from toy_world import adapters, pipeline, world  # noqa: E402
from devkit.server import Client, ComfyServer, make_base_directory  # noqa: E402
from devkit.workflow import widget_names  # noqa: E402

WORKFLOWS = os.path.join(ROOT, "workflows")
EXAMPLES = os.path.join(ROOT, "example_workflows")

# The interface of Train QR-LoRA as planned (branch `train`), in /object_info's shape.
_train_widgets = [
    ("rank", ["INT", {"default": 64}]), ("alpha", ["FLOAT", {"default": 0.0}]), ("steps", ["INT", {"default": 1000}]),
    ("learning_rate", ["FLOAT", {"default": 1e-4}]), ("batch_size", ["INT", {"default": 1}]),
    ("grad_accumulation", ["INT", {"default": 1}]), ("seed", ["INT", {"default": 0, "control_after_generate": False}]),
    ("optimizer", ["COMBO", {"options": ["AdamW", "Adam", "SGD", "RMSprop"], "default": "AdamW"}]),
    ("training_dtype", ["COMBO", {"options": ["bf16", "fp32"], "default": "bf16"}]),
    ("gradient_checkpointing", ["BOOLEAN", {"default": True}]),
    ("target_preset", ["COMBO", {"options": ["attention + MLP (paper)", "attention only", "custom pattern"], "default": "attention + MLP (paper)"}]),
    ("target_pattern", ["STRING", {"default": ""}]), ("triangular", ["BOOLEAN", {"default": True}]),
    ("checkpoint_every", ["INT", {"default": 0}]), ("filename_prefix", ["STRING", {"default": "qrlora/trained"}]),
    ("trigger_words", ["STRING", {"default": ""}]),
]
PLANNED = {
    "QRLoRATrain": {
        "input": {
            "required": {"model": ["MODEL", {}], "latents": ["LATENT", {}], "positive": ["CONDITIONING", {}], **dict(_train_widgets)},
            "optional": {"qr_lora": ["QR_LORA", {}]},
        },
        "input_order": {"required": ["model", "latents", "positive", *(n for n, _ in _train_widgets)], "optional": ["qr_lora"]},
        "output": ["QR_LORA", "MODEL", "LOSS_MAP", "IMAGE", "INT"],
        "output_name": ["qr_lora", "model", "loss_map", "loss_curve", "steps"],
        "display_name": "Train QR-LoRA",
    }
}

MIX_NOTE = (
    "Each weight says how much of that adapter goes into the mix (negative subtracts it). With two adapters the "
    "content ↔ style slider sets both: the middle keeps both at 1, the ends fade one out. '+ adapter' adds a slot.\n\n"
    "Adapters trained on the same base model share the basis Q, so the mix is one ΔR sum per layer; the node's "
    "report says so, or that it fell back to adding the deltas."
)
TRAIN_NOTE = (
    "The training set is a folder in ComfyUI's input/: images, each with a .txt caption of the same name "
    "(the stock dataset loader's layout). Put your own folder there and pick it above.\n\n"
    "Only ΔR is trained; Q and R come from the base weights (SVD + QR), so adapters of this base mix cleanly.\n\n"
    "The loss curve draws on the Train node while it runs. The adapter is saved as loras/qrlora/{kind}_*.safetensors: "
    "load it with Load QR-LoRA and mix it in qrlora_mix. Use the trigger word '{trigger}' in your prompts."
)
FOLDER_NOTE = (
    "Put your images (.png, .jpg, .webp; any sizes) into a folder inside ComfyUI's input folder, each with a .txt "
    "file of the same name holding its caption with your trigger word ('{trigger}'); images without one take the "
    "default caption. Kohya-style subfolders named '10_name' are repeated 10 times.\n\n"
    "Each image goes to the aspect-ratio bucket nearest its shape (about resolution² pixels, sides multiples of 64) "
    "and batches are drawn within one bucket; the data node lists the buckets it used.\n\n"
    "The sample images appear on the Train node as they are made and are kept next to the checkpoints "
    "(loras/qrlora/folder_*_sample*.png). To go on later, load a checkpoint with Load QR-LoRA into the Train node's "
    "qr_lora input: it resumes exactly where that checkpoint stopped."
)
COMPARE_NOTE = (
    "One bar per layer: the cosine similarity of the two adapters' ΔR (the paper's disentanglement measure). "
    "Bars inside the green band (|cos| < 0.1) mean the adapters change the layer independently, so mixing them "
    "keeps both; tall bars mean they fight over that layer."
)
NOTE_INFO = {"Note": {"input": {"required": {"text": ["STRING", {"multiline": True}]}}, "output": [], "output_name": []}}

BLUE, GREEN, PURPLE, BROWN = "#3f5f7f", "#3f6f4f", "#5f4f7f", "#6f5a3f"
DEMO_SEED = 42  # the sampler seed the workflows ship with


def N(key, node_type, title, box_w=300, box_h=0, **widgets):
    """A node: its key in this script, type, title, least width/height on the canvas, widget values by name."""
    return {"key": key, "type": node_type, "title": title, "width": box_w, "height": box_h, "widgets": widgets}


def G(title, color, *columns):
    return {"title": title, "color": color, "columns": [list(c) for c in columns]}


def model_group(title="1 · Base model (toy world, SD1.5 architecture)"):
    return G(title, BLUE, [
        N("unet", "UNETLoader", "Diffusion model", unet_name=demo_assets.UNET, weight_dtype="default"),
        N("clip", "CLIPLoader", "Text encoder (CLIP-L)", clip_name=demo_assets.CLIP_L, type="stable_diffusion"),
        N("vae", "VAELoader", "VAE", vae_name=demo_assets.VAE),
    ])


def generate_group(title, prompt, prefix, model_from, negative=""):
    sampler = pipeline.SAMPLER
    nodes = G(title, BROWN, [
        N("prompt", "CLIPTextEncode", "Prompt (with the trigger words)", box_w=360, text=prompt),
        N("negative", "CLIPTextEncode", "Negative prompt", box_w=360, text=negative),
        N("latent", "EmptyLatentImage", "Image size", box_w=360, width=world.SIZE, height=world.SIZE, batch_size=1),
    ], [
        N("sampler", "KSampler", "Sampler", seed=DEMO_SEED, _control="fixed", steps=sampler["steps"], cfg=sampler["cfg"],
          sampler_name=sampler["sampler_name"], scheduler=sampler["scheduler"], denoise=1.0),
        N("decode", "VAEDecode", "Decode"),
    ], [
        N("save", "SaveImage", "Result", box_w=380, box_h=330, filename_prefix=prefix),
    ])
    links = [
        (*model_from, "sampler", "model"), ("clip", 0, "prompt", "clip"), ("clip", 0, "negative", "clip"),
        ("prompt", 0, "sampler", "positive"), ("negative", 0, "sampler", "negative"), ("latent", 0, "sampler", "latent_image"),
        ("sampler", 0, "decode", "samples"), ("vae", 0, "decode", "vae"), ("decode", 0, "save", "images"),
    ]
    return nodes, links


def mix():
    generate, generate_links = generate_group(
        "3 · Generate with both trigger words", pipeline.MIX_PROMPT, "qrlora_demo/mix", ("apply", 0))
    groups = [
        model_group(),
        G("2 · Mix content + style adapters", GREEN, [
            N("content", "QRLoRALoader", "Content adapter", lora_name=demo_assets.CONTENT),
            N("style", "QRLoRALoader", "Style adapter", lora_name=demo_assets.STYLE),
        ], [
            N("merge", "QRLoRAMerge", "Mix content + style", weight_1=1.0, weight_2=1.0),
            N("note", "Note", "How the mix works", text=MIX_NOTE),
        ], [
            N("apply", "QRLoRAApply", "Apply the mix to the model", strength=1.0),
        ]),
        generate,
    ]
    links = [
        ("content", 0, "merge", "qr_lora_1"), ("style", 0, "merge", "qr_lora_2"),
        ("unet", 0, "apply", "model"), ("merge", 0, "apply", "qr_lora"), *generate_links,
    ]
    return groups, links


def train(kind: str):
    content = kind == "content"
    folder = demo_assets.CONTENT_FOLDER if content else demo_assets.STYLE_FOLDER
    trigger = pipeline.CONTENT_TRIGGER if content else f"{pipeline.STYLE_TRIGGER} style"
    prompt = f"a {pipeline.CONTENT_TRIGGER} shape in horizontal stripes style" if content else f"a ring in {pipeline.STYLE_TRIGGER} style"
    recipe = adapters.RECIPE
    generate, generate_links = generate_group(
        "4 · Try the trained adapter", prompt, f"qrlora_train/{kind}", ("train", 1))
    groups = [
        model_group(),
        G("2 · Training images + captions", PURPLE, [
            N("images", "LoadImageTextDataSetFromFolder", f"{kind.capitalize()} images and captions (a folder in input/)", folder=folder),
        ], [
            N("dataset", "MakeTrainingDataset", "Encode images (VAE) and captions (CLIP)"),
        ]),
        G(f"3 · Train the {kind} adapter", GREEN, [
            N("train", "QRLoRATrain", f"Train {kind} adapter", box_w=340, box_h=640, rank=recipe["rank"], alpha=0.0,
              steps=adapters.STEPS, learning_rate=recipe["learning_rate"], batch_size=recipe["batch_size"], grad_accumulation=1,
              seed=adapters.SEEDS[kind], optimizer="AdamW", training_dtype=recipe["training_dtype"],
              gradient_checkpointing=recipe["gradient_checkpointing"], target_preset="attention + MLP (paper)", target_pattern="",
              triangular=True, checkpoint_every=0, filename_prefix=f"qrlora/{kind}", trigger_words=trigger),
        ], [
            N("note", "Note", "About training", box_w=380, text=TRAIN_NOTE.format(kind=kind, trigger=trigger)),
            N("loss", "PreviewImage", "Loss curve", box_w=380, box_h=300),
        ]),
        generate,
    ]
    links = [
        ("images", 0, "dataset", "images"), ("images", 1, "dataset", "texts"), ("vae", 0, "dataset", "vae"), ("clip", 0, "dataset", "clip"),
        ("unet", 0, "train", "model"), ("dataset", 0, "train", "latents"), ("dataset", 1, "train", "positive"),
        ("train", 3, "loss", "images"), *generate_links,
    ]
    return groups, links


def train_folder():
    trigger = "<c>"
    generate, generate_links = generate_group(
        "4 · Try the trained adapter", f"a photo of a {trigger} dog on a beach", "qrlora_train/folder", ("train", 1))
    groups = [
        model_group(),
        G("2 · Training images from a folder", PURPLE, [
            N("folder", "LoadImageTextDataSetFromFolder", "Image folder (images + same-name .txt captions)", box_w=360,
              folder=folder_dataset.FOLDER),
            N("note", "Note", "About the folder", box_w=360, box_h=300, text=FOLDER_NOTE.format(trigger=trigger)),
        ], [
            N("data", "QRLoRATrainingData", "Bucket, encode and caption", box_w=340, resolution=256,
              default_caption=f"a photo of a {trigger} dog"),
        ]),
        G("3 · Train the adapter, with samples every 50 steps", GREEN, [
            N("samples", "QRLoRASampleSettings", "Samples while training", box_w=340,
              prompts=f"a photo of a {trigger} dog on a beach\na {trigger} dog in the snow", negative="", every=50,
              width=256, height=256, steps=8, cfg=4.0, sampler_name="euler", scheduler="normal", seed=42),
        ], [
            N("train", "QRLoRATrain", "Train from the folder", box_w=340, box_h=640, rank=8, alpha=0.0, steps=200, learning_rate=1e-4,
              batch_size=2, grad_accumulation=1, seed=0, optimizer="AdamW", training_dtype="fp32",
              gradient_checkpointing=False, target_preset="attention + MLP (paper)", target_pattern="", triangular=True,
              checkpoint_every=50, filename_prefix="qrlora/folder", trigger_words=trigger),
        ], [
            N("loss", "PreviewImage", "Loss curve", box_w=380, box_h=300),
        ]),
        generate,
    ]
    links = [
        ("folder", 0, "data", "images"), ("folder", 1, "data", "captions"), ("vae", 0, "data", "vae"), ("clip", 0, "data", "clip"),
        ("unet", 0, "train", "model"), ("data", 0, "train", "latents"), ("data", 1, "train", "positive"),
        ("clip", 0, "samples", "clip"), ("vae", 0, "samples", "vae"), ("samples", 0, "train", "samples"),
        ("train", 3, "loss", "images"), *generate_links,
    ]
    return groups, links


def compare():
    groups = [
        G("1 · Two adapters, same base", GREEN, [
            N("content", "QRLoRALoader", "Content adapter", lora_name=demo_assets.CONTENT),
            N("style", "QRLoRALoader", "Style adapter", lora_name=demo_assets.STYLE),
        ]),
        G("2 · ΔR cosine per layer", PURPLE, [
            N("note", "Note", "Reading the plot", box_w=420, text=COMPARE_NOTE),
            N("similarity", "QRLoRASimilarity", "Content vs style", box_w=420, box_h=480),
        ], [
            N("save", "SaveImage", "Save the plot", box_w=420, box_h=360, filename_prefix="qrlora_compare/similarity"),
        ]),
    ]
    links = [("content", 0, "similarity", "qr_lora_a"), ("style", 0, "similarity", "qr_lora_b"), ("similarity", 0, "save", "images")]
    return groups, links


WORKFLOW_SPECS = {
    "qrlora_mix": mix,
    "qrlora_train_content": lambda: train("content"),
    "qrlora_train_style": lambda: train("style"),
    "qrlora_compare": compare,
    "qrlora_train_folder": train_folder,
}


def _default(spec):
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    options = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
    return options[0] if options else None


def draft(groups, links, info: dict) -> tuple[dict, dict]:
    """A UI-format draft (nodes, links) and the layout the page should apply."""
    nodes, ids = [], {}
    for group in groups:
        for column in group["columns"]:
            for spec in column:
                ids[spec["key"]] = len(ids) + 1
    link_rows, inputs_of, outputs_of = [], {}, {}
    for link_id, (src, slot, dst, name) in enumerate(links, start=1):
        kind = info[next(s["type"] for g in groups for c in g["columns"] for s in c if s["key"] == src)]["output"][slot]
        link_rows.append([link_id, ids[src], slot, ids[dst], name, kind])
        inputs_of.setdefault(dst, {})[name] = (link_id, kind)
        outputs_of.setdefault(src, {}).setdefault(slot, []).append(link_id)
    for group in groups:
        for column in group["columns"]:
            for spec in column:
                node_info = info[spec["type"]]
                values = []
                widgets = spec["widgets"]
                for name in widget_names(node_info):
                    if name is None:
                        values.append(widgets.get("_control") or widgets.get("_upload"))
                        continue
                    section = "required" if name in node_info["input"].get("required", {}) else "optional"
                    values.append(widgets.get(name, _default(node_info["input"][section][name])))
                unknown = set(widgets) - set(widget_names(node_info)) - {"_control", "_upload"}
                if unknown:
                    raise SystemExit(f"{spec['title']}: {spec['type']} has no widgets {sorted(unknown)}")
                node_inputs = []
                for name, (link_id, kind) in inputs_of.get(spec["key"], {}).items():
                    node_inputs.append({"name": name, "type": kind, "link": link_id})
                node_outputs = [
                    {"name": n, "type": t, "links": outputs_of.get(spec["key"], {}).get(i, []), "slot_index": i}
                    for i, (n, t) in enumerate(zip(node_info.get("output_name", node_info["output"]), node_info["output"]))
                ]
                nodes.append({
                    "id": ids[spec["key"]], "type": spec["type"], "title": spec["title"], "pos": [0, 0],
                    "size": [spec["width"], 100], "flags": {}, "order": len(nodes), "mode": 0,
                    "inputs": node_inputs, "outputs": node_outputs,
                    "properties": {"Node name for S&R": spec["type"]}, "widgets_values": values,
                })
    for row in link_rows:  # the page wants input slot indexes; it re-derives them from names on load
        target = next(n for n in nodes if n["id"] == row[3])
        row[4] = next(i for i, s in enumerate(target["inputs"]) if s["name"] == row[4])
    layout = {
        "groups": [{"title": g["title"], "color": g["color"], "columns": [[ids[s["key"]] for s in c] for c in g["columns"]]} for g in groups],
        "widths": {ids[s["key"]]: s["width"] for g in groups for c in g["columns"] for s in c},
        "heights": {ids[s["key"]]: s["height"] for g in groups for c in g["columns"] for s in c},
    }
    workflow = {"last_node_id": len(nodes), "last_link_id": len(link_rows), "nodes": nodes, "links": link_rows,
                "groups": [], "config": {}, "extra": {}, "version": 0.4}
    return workflow, layout


LAYOUT_JS = """async ({workflow, layout}) => {
    await app.loadGraphData(workflow, true, true, null, {showMissingNodesDialog: false, showMissingModelsDialog: false});
    const TITLE = LiteGraph.NODE_TITLE_HEIGHT, GROUP_TITLE = 34, PAD = 16, GAP = 36;
    const nodes = layout.groups.flatMap(g => g.columns.flat()).map(id => app.graph.getNodeById(id));
    for (const node of nodes) {
        const [w, h] = node.computeSize();
        node.size = [Math.max(w, layout.widths[node.id]), Math.max(h, layout.heights[node.id])];
    }
    app.canvas.draw(true, true);  // drawing lays out the widgets, which may grow a node: place them after
    let x = 0;
    for (const g of layout.groups) {
        let colX = x + PAD, bottom = 0;
        for (const column of g.columns) {
            let y = GROUP_TITLE + PAD + TITLE, colWidth = 0;
            for (const id of column) {
                const node = app.graph.getNodeById(id);
                node.pos = [colX, y];
                y += node.size[1] + TITLE + PAD;
                colWidth = Math.max(colWidth, node.size[0]);
            }
            colX += colWidth + GAP;
            bottom = Math.max(bottom, y);
        }
        const group = new LiteGraph.LGraphGroup(g.title);
        group.font_size = 18;
        group.color = g.color;
        group.pos = [x, 0];
        group.size = [colX - GAP + PAD - x, bottom];
        app.graph.add(group);
        x = colX - GAP + PAD + 60;
    }
    app.canvas.ds.offset = [100, 170];
    app.canvas.ds.scale = 0.6;
    const data = JSON.parse(JSON.stringify(app.graph.serialize()));
    for (const n of data.nodes) {  // a node of a type the page lacks serializes as it was loaded: keep its new place
        const live = app.graph.getNodeById(n.id);
        n.pos = [...live.pos];
        n.size = [...live.size];
    }
    return data;
}"""


def build(names, url: str, info: dict) -> dict:
    out = {}
    with browser.chromium() as b:
        page = browser.open_comfy(b, url)
        for name in names:
            groups, links = WORKFLOW_SPECS[name]()
            workflow, layout = draft(groups, links, info)
            out[name] = page.evaluate(LAYOUT_JS, {"workflow": workflow, "layout": layout})
            out[name]["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-qrlora/workflows/{name}"))  # stable across rebuilds
        if page.errors:
            raise SystemExit(f"the page reported errors: {page.errors}")
    return out


def write(workflows: dict) -> None:
    os.makedirs(WORKFLOWS, exist_ok=True)
    for name, workflow in workflows.items():
        text = json.dumps(workflow, indent=1, ensure_ascii=False) + "\n"
        with open(os.path.join(WORKFLOWS, name + ".json"), "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote workflows/{name}.json ({len(workflow['nodes'])} nodes, {len(workflow['links'])} links, {len(workflow['groups'])} groups)")
    sync_examples()


def sync_examples() -> None:
    """example_workflows/ := workflows/ (same files, same bytes)."""
    os.makedirs(EXAMPLES, exist_ok=True)
    sources = {f for f in os.listdir(WORKFLOWS) if f.endswith(".json")}
    for f in os.listdir(EXAMPLES):
        if f.endswith(".json") and f not in sources:
            os.unlink(os.path.join(EXAMPLES, f))
    for f in sorted(sources):
        shutil.copyfile(os.path.join(WORKFLOWS, f), os.path.join(EXAMPLES, f))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(WORKFLOW_SPECS), help="which workflows (default: all)")
    parser.add_argument("--sync-only", action="store_true", help="only copy workflows/ to example_workflows/")
    args = parser.parse_args()
    if args.sync_only:
        sync_examples()
        return 0
    reason = browser.available()
    if reason:
        raise SystemExit(f"cannot build the workflows: {reason}")
    with tempfile.TemporaryDirectory(prefix="qrlora-workflows-") as base:
        make_base_directory(base, ROOT)
        demo_assets.training_folders(base)  # the dataset loader's folder list comes from input/
        folder_dataset.write(os.path.join(base, "input"))  # the folder node lists it
        server = ComfyServer(base).start()
        try:
            info = {**PLANNED, **NOTE_INFO, **Client(server.url).object_info()}
            write(build(args.names, server.url, info))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
