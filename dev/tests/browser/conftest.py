"""One headless Chromium and one ComfyUI page for the browser tests (2 cores: keep it to one)."""

import json
import os

import pytest

from devkit import browser
from devkit.host import PACK_ROOT

ARTIFACTS = os.path.join(PACK_ROOT, "test-artifacts")


@pytest.fixture(scope="session")
def chromium():
    reason = browser.available()
    if reason:
        pytest.fail(f"the browser tests cannot run: {reason}")
    with browser.chromium() as b:
        yield b


@pytest.fixture(scope="session")
def page(chromium, comfy, demo_models):
    """The page, opened once the demo files exist (its file lists are read when it loads)."""
    p = browser.open_comfy(chromium, comfy.url)
    p.our_errors = []
    p.on("console", lambda m: m.type == "error" and "comfyui-qrlora" in m.text + str(m.location) and p.our_errors.append(m.text))
    p.on("pageerror", lambda e: "comfyui-qrlora" in (e.stack or "") and p.our_errors.append(str(e)))
    yield p
    p.close()


@pytest.fixture
def ui(page):
    """The shared page, checked after each test for errors thrown by this pack's scripts."""
    browser.close_dialogs(page)
    before = len(page.our_errors)
    yield page
    assert page.our_errors[before:] == [], f"the pack's web extension raised errors: {page.our_errors[before:]}"


@pytest.fixture(scope="session")
def artifacts():
    os.makedirs(ARTIFACTS, exist_ok=True)
    return ARTIFACTS


def save_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
