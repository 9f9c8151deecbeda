"""Top lines of a py-spy raw (collapsed) profile: each function's self and inclusive share of samples.

``python -m scripts.topprof out.txt [25]``; ``scripts.bench --profile DIR`` prints the same for each
worker process it profiled.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def shares(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, self samples by function, inclusive samples by function) of a collapsed profile;
    a function is ``name (file)``, its line numbers merged; frames without a location (thread and
    process names) are dropped."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_LINE.sub(")", f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return total, self_c, incl


def summarise(path: Path, top: int = 25) -> str:
    total, self_c, incl = shares(path)
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples", "-- self --"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in self_c.most_common(top)]
    lines.append("-- inclusive --")
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
