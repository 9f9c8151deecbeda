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
#: frames every sample passes through (interpreter start, CLI, event loop): left out of the
#: inclusive list, where they would only fill the top lines with ~100 %
PLUMBING = re.compile(
    r"^<module> |\((<frozen runpy>|click/|faust/cli/|faust/app/base\.py|mode/"
    r"|asyncio/(base_events|events)\.py)"
)


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
    lines.append("-- inclusive (without the interpreter, CLI and event loop frames) --")
    inclusive = [(f, n) for f, n in incl.most_common() if not PLUMBING.search(f)][:top]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
