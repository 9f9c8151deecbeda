"""The cyclic garbage collector's settings for the long-running services (ingest, stage workers).

CPython runs a young collection every 700 net container allocations and, every 10th and 100th
time, older ones that walk every object that survived: the imported modules, the tenants, the
metrics, the stages' tables. A request or a record allocates hundreds of objects (parsed JSON,
models, envelopes, aiohttp's and aiokafka's own), almost none of them in cycles, so the collector
ran every few requests and its full walks grew with the heap. Measured in-process on the ingest
(``docs/design.md``, "Speed (issue 9)"): 35-48 µs of a seed 001 request's CPU went to the collector
with the defaults, 4-7 µs with this policy.

* :func:`gc.freeze` once a service has started: what startup built moves to a permanent
  generation that collections no longer walk (it is never garbage: modules, settings, tenants).
* ``YOUNG_THRESHOLD`` container allocations between young collections instead of 700 (the older
  generations' ratios unchanged): cycles are still collected, at most that many more objects
  wait for it.

``GC_TUNED=false`` (a setting) keeps Python's defaults, e.g. to compare.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

#: container allocations (net of deallocations) between young collections; CPython's default is 700
YOUNG_THRESHOLD = 20_000


def tune(name: str, *, enabled: bool = True) -> None:
    """Apply the policy in a service that has finished starting (``enabled``: the ``GC_TUNED`` setting)."""
    if not enabled:
        log.info("%s: garbage collector left at Python's defaults %s", name, gc.get_threshold())
        return
    gc.collect()  # what startup left as garbage goes now, not into the permanent generation
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    log.info(
        "%s: %d objects frozen out of the garbage collector's walks; young collections every %d allocations",
        name,
        gc.get_freeze_count(),
        YOUNG_THRESHOLD,
    )
