"""Adapter summaries for the page (format, rank, scale, layers, trigger words, base fingerprint), read off the request path."""

import threading
from collections import OrderedDict

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
