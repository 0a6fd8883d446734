"""Small HTTP routes for the web extension, on ComfyUI's own server.

GET /qrlora/summary?lora_name=<file in loras> -> the adapter's summary
(format, rank, layers, trigger words, base fingerprint), so Load QR-LoRA
can show what a file is as soon as it is picked, before anything runs.
Errors come back as {"error": sentence} with status 400.
"""

import asyncio
import logging

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.formats import load_adapter
from . import files

_cache: dict[tuple, dict] = {}  # (path, mtime, size) -> summary


def summary(lora_name: str) -> dict:
    key = files.identity(lora_name)
    if key not in _cache:
        adapter = load_adapter(key[0], basis_loader=files.basis_store().load, source=lora_name)
        _cache.clear()  # one file at a time is all the page asks for
        _cache[key] = adapter.summary()
    return _cache[key]


def running_server():
    """ComfyUI's PromptServer when the pack runs inside it; None when imported elsewhere (tests, bench)."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def register() -> None:
    """Add the routes when running inside ComfyUI's server (not when imported by tests)."""
    from aiohttp import web

    instance = running_server()
    if instance is None:
        return

    @instance.routes.get("/qrlora/summary")
    async def get_summary(request):
        name = request.query.get("lora_name", "")
        try:
            return web.json_response(await asyncio.to_thread(summary, name))
        except AdapterError as e:
            return web.json_response({"error": str(e)}, status=400)
        except Exception as e:  # anything else is our bug; say so instead of a bare 500
            logging.exception("[QR-LoRA] summary of %s failed", name)
            return web.json_response({"error": f"Reading {name} failed unexpectedly ({e}); see the server log."}, status=500)
