"""Optional memory tracing of a running process (off unless ``FEEDSTREAM_TRACEMALLOC`` is set).

With ``FEEDSTREAM_TRACEMALLOC=1`` a daemon thread starts :mod:`tracemalloc` (``FEEDSTREAM_TRACEMALLOC_FRAMES``
frames, default 6) and every ``FEEDSTREAM_TRACEMALLOC_EVERY_S`` seconds (default 60) appends to
``FEEDSTREAM_TRACEMALLOC_LOG`` (default ``tracemalloc-{name}-{pid}.log`` in the working directory; ``{name}``
and ``{pid}`` are replaced): the traced
total, the top allocation sites by line and by traceback *grown since the baseline* (the first snapshot,
taken ``FEEDSTREAM_TRACEMALLOC_BASELINE_S`` seconds after start, default 60), the live object counts by
type that grew most, and the process's RSS. A diagnostic for soaks (docs/design.md, "Hardening: fuzz and
soak"); it slows the process and costs memory of its own, so never on in production.
"""

from __future__ import annotations

import collections
import gc
import os
import threading
import time
import tracemalloc
from pathlib import Path

ENV = "FEEDSTREAM_TRACEMALLOC"


def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return -1.0


def _type_counts() -> collections.Counter[str]:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def _filtered(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    return snapshot.filter_traces(
        (
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        )
    )


def _loop(path: Path, every_s: float, baseline_s: float, top: int) -> None:
    time.sleep(baseline_s)
    base = _filtered(tracemalloc.take_snapshot())
    base_types = _type_counts()
    started = time.monotonic()
    with path.open("a") as log:
        log.write(
            f"# baseline: traced {sum(s.size for s in base.statistics('filename')) / 2**20:.1f} MiB, "
            f"RSS {_rss_mib():.1f} MiB\n"
        )
        log.flush()
    while True:
        time.sleep(every_s)
        snap = _filtered(tracemalloc.take_snapshot())
        types = _type_counts()
        current, peak = tracemalloc.get_traced_memory()
        lines = [
            f"\n=== +{time.monotonic() - started:.0f} s since baseline: traced {current / 2**20:.1f} MiB "
            f"(peak {peak / 2**20:.1f}), RSS {_rss_mib():.1f} MiB, gc objects {sum(types.values())}",
            "--- top growth by line:",
        ]
        for stat in snap.compare_to(base, "lineno")[:top]:
            lines.append(f"  {stat}")
        lines.append("--- top growth by traceback:")
        for stat in snap.compare_to(base, "traceback")[: max(3, top // 3)]:
            lines.append(f"  {stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks:")
            lines.extend(f"      {line}" for line in stat.traceback.format(most_recent_first=True))
        grown = sorted(((n - base_types.get(t, 0), t, n) for t, n in types.items()), reverse=True)[:top]
        lines.append("--- object counts grown most: " + ", ".join(f"{t} {d:+d} (={n})" for d, t, n in grown))
        with path.open("a") as log:
            log.write("\n".join(lines) + "\n")
        del snap, types


def maybe_start(name: str = "process") -> bool:
    """Start tracing if ``FEEDSTREAM_TRACEMALLOC`` is set (to anything but 0/empty); True if started."""
    if os.environ.get(ENV, "0") in ("", "0"):
        return False
    frames = int(os.environ.get(f"{ENV}_FRAMES", "6"))
    every_s = float(os.environ.get(f"{ENV}_EVERY_S", "60"))
    baseline_s = float(os.environ.get(f"{ENV}_BASELINE_S", "60"))
    top = int(os.environ.get(f"{ENV}_TOP", "25"))
    path = Path(os.environ.get(f"{ENV}_LOG") or "tracemalloc-{name}-{pid}.log")
    path = Path(str(path).replace("{name}", name).replace("{pid}", str(os.getpid())))
    tracemalloc.start(frames)
    threading.Thread(
        target=_loop, args=(path, every_s, baseline_s, top), name="memtrace", daemon=True
    ).start()
    return True
