"""Adapter summaries for the page (format, rank, scale, layers, trigger words, base fingerprint), read off the request path."""

import threading
from collections import OrderedDict

from ..qrlora_core.errors import AdapterError
from . import files

CACHED_SUMMARIES = 16  # the page asks about a handful of files at a time
PARALLEL_READS = 2  # files read at once; more only compete for the same disk and cores


class Summaries:
    """Summaries, and refusals, by file name and the identity of the bytes they were made from.

    The key is what files.load saw, never a hash taken at another moment,
    so a file rewritten meanwhile (A -> B -> A) cannot file B's summary
    under A; the name is part of it, so a byte copy reports its own name.
    Refusals are kept too: a file that takes a second to refuse (a huge
    header) costs that second once. Requests for a file being read wait
    for that read instead of starting their own, so N requests for two
    alternating files cost two reads.
    """

    def __init__(self):
        self._cache: OrderedDict[tuple, dict | str] = OrderedDict()  # (name, identity) -> summary, or the refusal's message
        self._lock = threading.Lock()
        self._reading: dict[str, list] = {}  # name -> [lock held while the file is looked at, requests waiting]
        self._slots = threading.BoundedSemaphore(PARALLEL_READS)

    def _cached(self, lora_name: str) -> dict | str | None:
        identity = files.known_identity(lora_name)
        with self._lock:
            if identity is None or (lora_name, identity) not in self._cache:
                return None
            self._cache.move_to_end((lora_name, identity))
            return self._cache[(lora_name, identity)]

    def _compute(self, lora_name: str) -> dict | str:
        try:
            with self._slots:
                adapter, identity = files.load(lora_name)
            result = adapter.summary()
        except AdapterError as e:
            result, identity = str(e), getattr(e, "identity", None)
        if identity is not None:
            with self._lock:
                self._cache[(lora_name, identity)] = result
                while len(self._cache) > CACHED_SUMMARIES:
                    self._cache.popitem(last=False)
        return result

    def get(self, lora_name: str) -> dict:
        with self._lock:
            entry = self._reading.setdefault(lora_name, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:  # requests for a file being read wait for that read, then find it cached
                result = self._cached(lora_name)
                if result is None:
                    result = self._compute(lora_name)
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._reading[lora_name]
        if isinstance(result, str):
            raise AdapterError(result)
        return result


summaries = Summaries()


def summary(lora_name: str) -> dict:
    return summaries.get(lora_name)
