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
import functools
import logging
import threading
from collections import OrderedDict

from ..qrlora_core.errors import AdapterError
from ..qrlora_core.formats import load_adapter
from . import files

CACHED_SUMMARIES = 16  # the page asks about a handful of files at a time
PARALLEL_READS = 2  # files read at once; more only compete for the same disk and cores


class Summaries:
    """Adapter summaries by file content, with at most one read of a file at a time.

    Requests for a file being read wait for that read instead of starting
    their own, so N requests for two alternating files cost two reads.
    """

    def __init__(self):
        self._cache: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._reading: dict[str, list] = {}  # name -> [lock held while the file is looked at, requests waiting]
        self._slots = threading.BoundedSemaphore(PARALLEL_READS)

    def _key(self, lora_name: str) -> tuple:
        with self._slots:  # hashing reads the file when it is new or changed
            return files.loaded_identity(lora_name)

    def get(self, lora_name: str) -> dict:
        with self._lock:
            entry = self._reading.setdefault(lora_name, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:  # requests for a file being read wait for that read, then find it cached
                key = self._key(lora_name)
                with self._lock:
                    if key in self._cache:
                        self._cache.move_to_end(key)
                        return self._cache[key]
                with self._slots:
                    adapter = load_adapter(files.adapter_path(lora_name), basis_loader=files.basis_store().load, source=lora_name)
                summary = adapter.summary()
                if self._key(lora_name) == key:  # the file did not change while it was read
                    with self._lock:
                        self._cache[key] = summary
                        while len(self._cache) > CACHED_SUMMARIES:
                            self._cache.popitem(last=False)
                return summary
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._reading[lora_name]


summaries = Summaries()


def summary(lora_name: str) -> dict:
    return summaries.get(lora_name)


@functools.cache
def page_facts() -> dict:
    """{"nodes": {web module: node id}, "events": {name: event type}} for GET /qrlora/page."""
    from .loader import QRLoRALoader
    from .merge import QRLoRAMerge
    from .similarity import QRLoRASimilarity
    from .train import LIVE_LOSS_EVENT, QRLoRATrain
    from .train_data import QRLoRATrainingData

    drawn = {"loader": QRLoRALoader, "merge": QRLoRAMerge, "similarity": QRLoRASimilarity, "train": QRLoRATrain,
             "train_data": QRLoRATrainingData}
    return {"nodes": {module: node.define_schema().node_id for module, node in drawn.items()},
            "events": {"train_loss": LIVE_LOSS_EVENT}}


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

    @instance.routes.get("/qrlora/page")
    async def get_page_facts(request):
        return web.json_response(page_facts())

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
