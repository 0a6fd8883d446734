"""Small HTTP routes for the web extension, on ComfyUI's own server.

GET /qrlora/summary?lora_name=<file in loras> -> the adapter's summary
(format, rank, scale, layers, trigger words, base fingerprint), so Load
QR-LoRA can show what a file is as soon as it is picked, before anything
runs. Errors come back as {"error": sentence} with status 400.

GET /qrlora/page -> what web/*.js needs to know of the Python side (the
node each of its modules draws, the live event names), read once by the
page, so no value is copied by hand into the scripts.
"""

import asyncio
import logging

from ..qrlora_core.errors import AdapterError
from .summaries import summary

# Train QR-LoRA's live events (PromptServer.send_sync), drawn by web/train.js as the run goes on:
LIVE_LOSS_EVENT = "qrlora.train.loss"  # after each step: {node, step, steps, loss, seconds}
SAMPLES_EVENT = "qrlora.train.samples"  # after each set of sample images: {node, step, samples}
STOPPED_EVENT = "qrlora.train.stopped"  # cancelled, before ComfyUI reports the interrupt: {node, step, file, text}


def page_facts(drawn: dict) -> dict:
    """{"nodes": {web module: node id}, "events": {name: event type}} for GET /qrlora/page; `drawn`: {web module: node class}."""
    return {"nodes": {module: node.define_schema().node_id for module, node in drawn.items()},
            "events": {"train_loss": LIVE_LOSS_EVENT, "train_samples": SAMPLES_EVENT, "train_stopped": STOPPED_EVENT}}


def running_server():
    """ComfyUI's PromptServer when the pack runs inside it; None when imported elsewhere (tests, bench)."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def register(drawn: dict) -> None:
    """Add the routes when running inside ComfyUI's server (not when imported by tests); `drawn`: {web module: node class}."""
    from aiohttp import web

    instance = running_server()
    if instance is None:
        return
    facts = page_facts(drawn)

    @instance.routes.get("/qrlora/page")
    async def get_page_facts(request):
        return web.json_response(facts)

    @instance.routes.get("/qrlora/summary")
    async def get_summary(request):
        name = request.query.get("lora_name", "")
        try:
            return web.json_response(await asyncio.to_thread(summary, name))
        except AdapterError as e:
            return web.json_response({"error": str(e)}, status=400)
        except Exception:  # anything else is our bug: logged with its traceback, a sentence for the page
            logging.exception("[QR-LoRA] summary of %s failed", name)
            return web.json_response({"error": f"Reading {name} failed unexpectedly; see the server log."}, status=500)
