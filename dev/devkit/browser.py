"""The ComfyUI page in Debian's Chromium, driven by Playwright (never `playwright install`)."""

import contextlib
import os
import shutil
import urllib.request

CHROMIUM = os.environ.get("QRLORA_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1600, "height": 1000}


def available() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} is missing: run dev/scripts/setup_host.sh as root (it installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -r dev/requirements.txt"
    return None


@contextlib.contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_comfy(browser, url: str, path: str = "/"):
    """A page with the ComfyUI app loaded and no dialog over it."""
    past_first_visit(url)
    page = browser.new_page(viewport=VIEWPORT)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url + path)
    wait_ready(page)
    return page


def past_first_visit(url: str) -> None:
    """Mark the server's user as past the first visit, which opens the Templates dialog over the canvas
    a moment after the app is ready (the frontend does so while Comfy.TutorialCompleted is false)."""
    request = urllib.request.Request(url + "/settings/Comfy.TutorialCompleted", data=b"true", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200, f"the server refused the setting: {answer.status}"


def wait_ready(page, timeout_ms: int = 90_000) -> None:
    page.wait_for_function("window.app && window.app.graph && window.app.canvas && window.LiteGraph", timeout=timeout_ms)
    page.wait_for_function("() => !window.app.configuringGraph", timeout=timeout_ms)
    close_dialogs(page)


CLOSE_BUTTON_JS = """() => {
    const mask = document.querySelector('.p-dialog-mask');
    const buttons = [...(mask?.querySelectorAll('button') ?? [])].map(b => b.getBoundingClientRect())
        .filter(r => r.width > 0 && r.top < 200);
    const r = buttons.sort((a, b) => b.right - a.right)[0];
    return r ? [r.left + r.width / 2, r.top + r.height / 2] : null;
}"""
NO_DIALOG_JS = "() => !document.querySelector('.p-dialog-mask')"


def close_dialogs(page) -> None:
    """Close whatever dialog covers the page: Escape, else its close button (top right)."""
    for _ in range(3):
        if page.evaluate(NO_DIALOG_JS):
            return
        page.keyboard.press("Escape")
        if _closed(page):
            return
        where = page.evaluate(CLOSE_BUTTON_JS)
        if where:
            page.mouse.click(*where)
            if _closed(page):
                return
    assert page.evaluate(NO_DIALOG_JS), "a dialog over the page would not close"


def _closed(page, timeout_ms: int = 2_000) -> bool:
    """Whether the dialog goes within the time its closing animation takes."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(NO_DIALOG_JS, timeout=timeout_ms)
        return True
    except PlaywrightTimeout:
        return False


def next_frames(page, frames: int = 2) -> None:
    """Return once the page has drawn `frames` more animation frames (what a canvas change needs to show)."""
    page.evaluate("(n) => new Promise(done => { const step = k => k ? requestAnimationFrame(() => step(k - 1)) : done(); step(n); })", frames)


def load_workflow(page, workflow: dict) -> list[str]:
    """Load a UI-format workflow as a user's drop would; returns the node types the page lacks."""
    return page.evaluate(
        """async (workflow) => {
            const missing = [];
            for (const n of workflow.nodes) if (!LiteGraph.registered_node_types[n.type]) missing.push(n.type);
            await app.loadGraphData(workflow, true, true, null, {showMissingNodesDialog: false, showMissingModelsDialog: false});
            return missing;
        }""",
        workflow,
    )
