"""UI-format workflows (what the page saves and loads) -> API-format prompts (what /prompt runs).

The page keeps widget values as a list per node (`widgets_values`), in the
order the node's widgets were created, and links as a table. The order of
the widgets is the order of the node's inputs in /object_info
(`input_order`), each widget input taking one value, plus one extra value
after every widget the frontend gives a "control after generate" combo
(INT inputs with `control_after_generate`, and by the frontend's old rule
inputs named seed / noise_seed), and one after file combos with an upload
button (image_upload and friends). Extensions may add their own widgets
after the node's; their values come last and are ignored here. Widgets a
node gained after the file was saved (its list is shorter) take their
defaults, as on the page.

Frontend-only nodes (notes, reroutes) have no API form: notes are dropped,
links through reroutes are followed to their source. Muted nodes (mode 2)
are dropped; bypassed nodes (mode 4) pass their first input of a matching
type through, as the page does.
"""

import json

VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_FLAGS = ("image_upload", "animated_image_upload", "video_upload", "audio_upload")
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    pass


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _is_widget(spec: list) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_layout(name: str, spec: list) -> list[str | None]:
    """The widgets_values slots one input takes: its own name, then None for each frontend-only extra."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    slots = [name]
    control = opts.get("control_after_generate")
    if control is None and spec[0] == "INT":
        control = name in ("seed", "noise_seed")
    if control:
        slots.append(None)
    if any(opts.get(flag) for flag in UPLOAD_FLAGS):
        slots.append(None)
    return slots


def widget_names(info: dict) -> list[str | None]:
    """The node's widgets_values layout from its /object_info entry."""
    inputs = info.get("input", {})
    order = info.get("input_order") or {section: list(inputs.get(section, {})) for section in ("required", "optional")}
    layout = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = inputs.get(section, {}).get(name)
            if spec is not None and _is_widget(spec):
                layout += widget_layout(name, spec)
    return layout


def widget_values(node: dict, info: dict) -> dict:
    values = node.get("widgets_values") or []
    if isinstance(values, dict):  # some extensions save widget values by name
        return dict(values)
    out = {}
    layout = widget_names(info)
    for name, value in zip(layout, values):
        if name is not None:
            out[name] = value
    # Widgets a node gained after the file was saved are missing from its list; the page gives them their defaults.
    specs = {**info.get("input", {}).get("required", {}), **info.get("input", {}).get("optional", {})}
    for name in layout[len(values):]:
        spec = specs.get(name)
        if name is not None and spec is not None and len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
            out[name] = spec[1]["default"]
    return out


def to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt the Queue button would send for this UI-format workflow."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link.get("type"))
        else:
            links[link[0]] = (link[1], link[2], link[5] if len(link) > 5 else None)

    def source(link_id, seen=()):
        """(node id, output slot) that really produces a link's value, through reroutes and bypasses."""
        if link_id not in links:
            raise WorkflowError(f"link {link_id} is used by a node but missing from the workflow's link table")
        origin, slot, kind = links[link_id]
        node = nodes.get(origin)
        if node is None:
            raise WorkflowError(f"link {link_id} starts at node {origin}, which is not in the workflow")
        if origin in seen:
            raise WorkflowError(f"the links through node {origin} form a loop")
        if node["type"] == "Reroute" or node.get("mode") == BYPASSED:
            upstream = [i for i in node.get("inputs", []) if i.get("link") is not None
                        and (node["type"] == "Reroute" or i.get("type") in (kind, "*"))]
            if not upstream:
                return None
            return source(upstream[0]["link"], (*seen, origin))
        if node.get("mode") == MUTED:
            return None
        return origin, slot

    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in VIRTUAL_NODES or node.get("mode") in (MUTED, BYPASSED):
            continue
        info = object_info.get(kind)
        if info is None:
            raise WorkflowError(f"node {node['id']} ({node.get('title') or kind}) has type {kind}, which this server does not know")
        inputs = widget_values(node, info)
        for slot in node.get("inputs", []):
            if slot.get("link") is None:
                continue
            src = source(slot["link"])
            if src is None:
                inputs.pop(slot["name"], None)
            else:
                inputs[slot["name"]] = [str(src[0]), src[1]]
        entry = {"class_type": kind, "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node["id"])] = entry
    return prompt


def node_id(workflow: dict, title: str) -> str:
    """The id of the node with this title (workflows name their nodes for people)."""
    found = [n["id"] for n in workflow["nodes"] if n.get("title") == title]
    if len(found) != 1:
        raise WorkflowError(f"expected one node titled {title!r}, found {len(found)}")
    return str(found[0])


def set_inputs(prompt: dict, node: str, **values) -> dict:
    """Change widget values of one node of an API prompt (smaller images for tests, other weights)."""
    missing = set(values) - set(prompt[node]["inputs"])
    if missing:
        raise WorkflowError(f"node {node} ({prompt[node]['class_type']}) has no inputs {sorted(missing)}")
    prompt[node]["inputs"].update(values)
    return prompt
