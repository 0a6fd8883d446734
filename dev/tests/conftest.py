"""Shared fixtures. Tests import the pack as `comfyui_qrlora.*` (its one name
outside ComfyUI, devkit/host.py); unit tests use `comfyui_qrlora.qrlora_core`
without ComfyUI, integration tests drive the real ComfyUI server
(devkit/server.py). tests/support holds what only the tests use."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # devkit, toy_world

from devkit import host  # noqa: E402
from support import seeds  # noqa: E402

host.import_pack(entry_point=False)


def pytest_report_header(config):
    return f"random draws: {seeds.replay()} (set it to replay them; support/seeds.py)"


@pytest.fixture(autouse=True)
def _seeded_global_rng(request):
    """torch's global generator seeded per test from the session seed, for draws that take no generator."""
    torch.manual_seed(seeds.seed_for("global:" + request.node.nodeid))


@pytest.fixture
def rng(request):
    """A generator of the test's own, from the session seed (support/seeds.py); failures print the seed."""
    return seeds.generator(request.node.nodeid)


# ------------------------------------------------------------ the real server


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """One real ComfyUI server for the session, with this pack in its custom_nodes (and the tests' small Flux/SDXL node)."""
    from devkit.server import ComfyServer, make_base_directory

    base = make_base_directory(str(tmp_path_factory.mktemp("comfy-base")), small_models=True)
    server = ComfyServer(base).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_models(comfy):
    """The demo's model, adapters and training images in the server's folders (example_workflows/*.json use them)."""
    from toy_world import demo_assets

    demo_assets.build(comfy.base)
    return comfy.base


@pytest.fixture(scope="session")
def object_info(comfy):
    from devkit.server import Client

    return Client(comfy.url).object_info()


@pytest.fixture
def client(comfy, request):
    """An HTTP client for the session's server; the server's log is shown if the test fails."""
    from devkit.server import Client

    assert comfy.alive(), f"the ComfyUI server died earlier:\n{comfy.log_tail()}"
    offset = comfy.log_size()
    yield Client(comfy.url)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        request.node.add_report_section("call", "ComfyUI server log", comfy.log_tail(offset))


# ------------------------------------------------------------ trainings beside the suite


def pytest_collection_modifyitems(items):
    """Tests marked trains_in_background run last: their servers train while everything else runs."""
    items.sort(key=lambda item: item.get_closest_marker("trains_in_background") is not None)


def pytest_collection_finish(session):
    """Start the background trainings of the collected tests marked trains_in_background (their module's
    start_in_background), once per module; not for --collect-only."""
    if session.config.option.collectonly:
        return
    for module in {item.module for item in session.items if item.get_closest_marker("trains_in_background")}:
        module.start_in_background(session.config)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
    if report.failed:
        report.sections.append(("random draws", f"replay: {seeds.replay(item.nodeid)}"))
