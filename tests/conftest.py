"""Shared fixtures. Unit tests import qrlora_core directly; integration tests
drive the real ComfyUI server (see tests/support/server.py)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the wall clock; the seed is printed for replay."""
    seed = int(os.environ.get("QRLORA_TEST_SEED", torch.seed() % 2**31))
    print(f"{request.node.name}: QRLORA_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------ the real server

SERVER_LOG_MARK = "_server_log_offset"


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """One real ComfyUI server for the session, with this pack in its custom_nodes."""
    from support.server import ComfyServer, make_base_directory

    base = make_base_directory(str(tmp_path_factory.mktemp("comfy-base")))
    server = ComfyServer(base).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_models(comfy):
    """The demo's model, adapters and training images in the server's folders (example_workflows/*.json use them)."""
    from support import demo_assets

    demo_assets.build(comfy.base)
    return comfy.base


@pytest.fixture(scope="session")
def object_info(comfy):
    from support.server import Client

    return Client(comfy.url).object_info()


@pytest.fixture
def client(comfy, request):
    """An HTTP client for the session's server; the server's log is shown if the test fails."""
    from support.server import Client

    assert comfy.alive(), f"the ComfyUI server died earlier:\n{comfy.log_tail()}"
    offset = comfy.log_size()
    yield Client(comfy.url)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        request.node.add_report_section("call", "ComfyUI server log", comfy.log_tail(offset))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
