"""The worker's ``GET /status`` page: the status snapshot as one server-rendered HTML page.

No build step and no script: CSS bars, a table per part, ``<meta http-equiv="refresh">`` to follow
along. Every text from outside (domain names, errors quoting inputs) is escaped. Numbers carry
``data-*`` attributes so a test (or a scraper) finds them without parsing the layout.
"""

from __future__ import annotations

from html import escape

from pipeline.ops.status import Snapshot

REFRESH_S = 5
TIME = "%Y-%m-%d %H:%M:%S"

_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{width:240px;height:12px;background:#eee;border-radius:3px}
.fill{height:12px;background:#3b82f6;border-radius:3px}.full{background:#f59e0b}
.lag{color:#b91c1c;font-weight:600}.muted{color:#777}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _bar(pending: int, threshold: int | None) -> str:
    share = 0.0 if not threshold else min(1.0, pending / threshold)
    full = " full" if threshold and pending >= threshold else ""
    return f'<div class="bar"><div class="fill{full}" style="width:{share * 100:.1f}%"></div></div>'


def render_status(snap: Snapshot, *, worker: str = "") -> str:
    """The page (a complete HTML document)."""
    rows = []
    for d in snap.domains:
        t = d.last_trigger
        trigger = (
            f"#{t.sequence} {_e(t.reason)} {t.emitted_at:%Y-%m-%d %H:%M:%S}"
            if t
            else '<span class="muted">none</span>'
        )
        age = "" if d.oldest_pending_age_s is None else f"{d.oldest_pending_age_s:.0f} s"
        dom = _e(d.domain)
        rows.append(
            f'<tr data-domain="{dom}"><td>{dom}</td><td>{_e(d.tenant or "")}</td>'
            f'<td class="n" data-field="pending">{d.pending}</td>'
            f'<td class="n" data-field="threshold">{"" if d.threshold is None else d.threshold}</td>'
            f"<td>{_bar(d.pending, d.threshold)}</td>"
            f'<td class="n" data-field="total">{d.total}</td>'
            f'<td data-field="last-trigger">{trigger}</td><td class="n">{age}</td></tr>'
        )
    triggers = sorted(
        (d.last_trigger for d in snap.domains if d.last_trigger), key=lambda t: t.emitted_at, reverse=True
    )
    trigger_rows = [
        f'<tr data-trigger="{_e(t.trigger_id)}"><td>{t.emitted_at:{TIME}}</td>'
        f'<td>{_e(t.domain)}</td><td class="n">{t.sequence}</td><td>{_e(t.reason)}</td>'
        f'<td class="n" data-field="count">{t.count}</td>'
        f"<td>{_e(t.range.topic)}[{t.range.partition}] {t.range.start_offset}..{t.range.end_offset}</td>"
        "</tr>"
        for t in triggers[:20]
    ]
    lag_rows = [
        f'<tr data-stage="{_e(s.stage)}" data-topic="{_e(s.topic)}" data-partition="{s.partition}">'
        f'<td>{_e(s.stage)}</td><td>{_e(s.topic)}</td><td class="n">{s.partition}</td>'
        f'<td class="n">{"-" if s.committed is None else s.committed}</td><td class="n">{s.end}</td>'
        f'<td class="n{" lag" if s.lag else ""}" data-field="lag">{s.lag}</td></tr>'
        for s in snap.stages
    ]
    letters = [
        f'<tr data-letter="{_e(x.letter)}"><td>{_e(x.letter)}</td><td>{x.failed_at:%Y-%m-%d %H:%M:%S}</td>'
        f'<td>{_e(x.stage)}</td><td data-field="reason">{_e(x.reason)}</td><td>{_e(x.error)}</td></tr>'
        for x in snap.dlq.latest
    ]
    reasons = ", ".join(f"{_e(k)}: {v}" for k, v in sorted(snap.dlq.by_reason.items()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>feedstream status</title><style>{_STYLE}</style></head>
<body>
<h1>feedstream status</h1>
<p class="muted">{_e(worker)} snapshot at <span id="taken-at">{snap.taken_at:%Y-%m-%d %H:%M:%S} UTC</span>,
refreshed every {REFRESH_S} s</p>
<h2>Domains: pending vs threshold</h2>
<table id="domains"><tr><th>domain</th><th>tenant</th><th>pending</th><th>threshold</th><th></th>
<th>total</th><th>last trigger</th><th>oldest pending</th></tr>
{"".join(rows)}</table>
<h2>Last triggers</h2>
<table id="triggers"><tr><th>emitted</th><th>domain</th><th>seq</th><th>reason</th><th>units</th>
<th>range</th></tr>
{"".join(trigger_rows) or '<tr><td colspan="6" class="muted">none yet</td></tr>'}</table>
<h2>Stage lag per partition</h2>
<table id="lag"><tr><th>stage</th><th>topic</th><th>partition</th><th>committed</th><th>end</th>
<th>lag</th></tr>
{"".join(lag_rows)}</table>
<h2>Dead letters: <span id="dlq-size" data-field="dlq-size">{snap.dlq.size}</span></h2>
<p class="muted">{reasons}</p>
<table id="dlq"><tr><th>letter</th><th>failed</th><th>stage</th><th>reason</th><th>error</th></tr>
{"".join(letters) or '<tr><td colspan="5" class="muted">none</td></tr>'}</table>
</body></html>
"""
