"""The ComfyUI page in Debian's Chromium, driven by Playwright (never `playwright install`)."""

import contextlib
import os
import shutil

CHROMIUM = os.environ.get("QRLORA_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1600, "height": 1000}


def available() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} is missing: run scripts/setup_host.sh as root (it installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -r requirements-dev.txt"
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
    """A page with the ComfyUI app loaded and the first-visit Templates dialog closed."""
    page = browser.new_page(viewport=VIEWPORT)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url + path)
    wait_ready(page)
    return page


def wait_ready(page, timeout_ms: int = 90_000) -> None:
    page.wait_for_function("window.app && window.app.graph && window.app.canvas && window.LiteGraph", timeout=timeout_ms)
    page.wait_for_function("() => !window.app.configuringGraph", timeout=timeout_ms)
    # A first visit (per server user) opens the Templates dialog a moment after the app is ready.
    try:
        page.wait_for_selector(".p-dialog-mask", timeout=5_000)
    except Exception:  # playwright's TimeoutError: no dialog this time
        pass
    close_dialogs(page)


CLOSE_BUTTON_JS = """() => {
    const mask = document.querySelector('.p-dialog-mask');
    const buttons = [...(mask?.querySelectorAll('button') ?? [])].map(b => b.getBoundingClientRect())
        .filter(r => r.width > 0 && r.top < 200);
    const r = buttons.sort((a, b) => b.right - a.right)[0];
    return r ? [r.left + r.width / 2, r.top + r.height / 2] : null;
}"""


def close_dialogs(page) -> None:
    """Close the Templates dialog a first visit opens (Escape, else its close button, top right)."""
    for _ in range(3):
        if not page.locator(".p-dialog-mask").count():
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
        if page.locator(".p-dialog-mask").count():
            where = page.evaluate(CLOSE_BUTTON_JS)
            if where:
                page.mouse.click(*where)
                page.wait_for_timeout(300)
    assert not page.locator(".p-dialog-mask").count(), "a dialog over the page would not close"


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
