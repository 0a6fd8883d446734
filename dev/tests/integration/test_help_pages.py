"""Every node of the pack has a help page, served where the frontend's node help panel looks for it.

Frontend 1.32.9 (NodeHelpService) asks /extensions/<pack folder>/docs/<node id>/<locale>.md, then
/extensions/<pack folder>/docs/<node id>.md, and resolves the page's relative pictures against
/extensions/<pack folder>/docs/.
"""

import re
import urllib.request

import pytest

from devkit.server import PACK_FOLDER_NAME

pytestmark = pytest.mark.server

PICTURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def get(comfy, path):
    with urllib.request.urlopen(comfy.url + path, timeout=30) as r:
        return r.status, r.headers["Content-Type"], r.read()


def test_each_node_of_the_pack_has_a_help_page_the_server_serves(comfy, object_info):
    ours = sorted(name for name, info in object_info.items() if info["python_module"] == f"custom_nodes.{PACK_FOLDER_NAME}")
    assert "QRLoRAMixer" in ours and len(ours) >= 13
    for node in ours:
        base = f"/extensions/{PACK_FOLDER_NAME}/docs/"
        status, _, body = get(comfy, f"{base}{node}.md")
        page = body.decode("utf-8")
        assert status == 200 and page.startswith(f"# {object_info[node]['display_name']}\n"), node
        assert "## Inputs" in page and "## Outputs" in page, f"{node}'s page names no inputs or outputs"
        for picture in PICTURE.findall(page):
            status, kind, data = get(comfy, base + picture)
            assert status == 200 and kind.startswith("image/") and len(data) < 32_000, (node, picture)
