"""Calling the ingest over real HTTP, as a client would."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from pipeline.procs import Service

DEV_KEY = "fs_dev_key_123"
OTHER_KEY = "fs_other_key_456"
KAIZEN_KEY = "kaizen_abc123"


def base_url(svc: Service) -> str:
    return svc.health_url.rsplit("/", 1)[0]


async def post(
    svc: Service,
    path: str,
    body: Any,
    *,
    key: str | None = DEV_KEY,
    header: str = "bearer",
    correlation_id: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any, dict[str, str]]:
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        if header == "bearer":
            h["Authorization"] = f"Bearer {key}"
        else:
            h["X-API-Key"] = key
    if correlation_id:
        h["X-Correlation-Id"] = correlation_id
    data = raw if raw is not None else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url(svc) + path, data=data, headers=h) as resp,
    ):
        text = await resp.read()
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed = text.decode(errors="replace")
        return resp.status, parsed, {k.lower(): v for k, v in resp.headers.items()}
