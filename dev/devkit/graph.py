"""Building API-format prompts without hand-numbering nodes."""


class Graph:
    def __init__(self):
        self.nodes = {}

    def add(self, class_type: str, **inputs) -> "Ref":
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": {k: (v.link if isinstance(v, Ref) else v) for k, v in inputs.items()}}
        return Ref(node_id)

    def prompt(self) -> dict:
        return self.nodes


class Ref:
    def __init__(self, node_id: str, index: int = 0):
        self.node_id = node_id
        self.link = [node_id, index]

    def __getitem__(self, index: int) -> "Ref":
        return Ref(self.node_id, index)
