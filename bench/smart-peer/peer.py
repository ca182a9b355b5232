"""The /api/smart peer of bench/run: fibd's seed hedging plan as people usually build it.

FastAPI on uvicorn (one worker), one shared httpx.AsyncClient (a keep-alive
pool of up to 512 connections), plain asyncio: asyncio.wait(FIRST_COMPLETED)
over the attempts in flight, no hedging budget.

    GET /api/smart?timeout=MS

The plan (fibd's, README.md "/api/smart"): send one GET to SMART_UPSTREAM. If
it has not answered successfully within SMART_HEDGE_MS (default 300), or it
fails sooner, send two more at once. The first success (a 2xx whose body is
JSON) wins and the others are cancelled; when every attempt sent has failed,
answer 503 at once with the most telling failure; at the caller's deadline,
503 upstream_timeout. timeout is required, 1 to 60000 ms, else 400.

    SMART_UPSTREAM=http://127.0.0.1:9000/api/data \\
        uvicorn peer:app --host 127.0.0.1 --port 8081 --workers 1 --no-access-log
"""

import asyncio
import contextlib
import os
import time

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

UPSTREAM = os.environ.get("SMART_UPSTREAM", "http://127.0.0.1:9000/api/data")
HEDGE_AFTER = int(os.environ.get("SMART_HEDGE_MS", "300")) / 1000
ATTEMPTS_MAX = 3
TIMEOUT_MS_MIN, TIMEOUT_MS_MAX = 1, 60_000
RANGE = "timeout is required: an integer number of milliseconds from 1 to 60000, as in /api/smart?timeout=800"
UNKNOWN = "unknown query parameter; /api/smart takes only timeout, milliseconds from 1 to 60000"


class Failure(Exception):
    """Why one attempt failed: fibd's error code, a rank (which failure the
    answer names when attempts failed differently) and a detail."""

    def __init__(self, code, rank, detail, upstream_status=None):
        super().__init__(detail)
        self.code, self.rank, self.detail, self.upstream_status = code, rank, detail, upstream_status


@contextlib.asynccontextmanager
async def lifespan(app):
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    # No per-request timeout of httpx's own: the caller's deadline bounds every attempt.
    app.state.client = httpx.AsyncClient(limits=limits, timeout=None, headers={"Accept": "application/json"})
    yield
    await app.state.client.aclose()


app = FastAPI(lifespan=lifespan)


async def attempt(client):
    """One GET to the upstream: its JSON, or a Failure."""
    try:
        r = await client.get(UPSTREAM)
    except httpx.ConnectError as e:
        raise Failure("upstream_unavailable", 2, "the upstream refused the connection or could not be reached") from e
    except httpx.PoolTimeout as e:
        raise Failure("upstream_unavailable", 1, "every outbound connection is in use; retry shortly") from e
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
        raise Failure("upstream_unavailable", 3, "the upstream closed or reset the connection before a whole answer") from e
    except httpx.HTTPError as e:
        raise Failure("upstream_malformed", 4, f"the upstream's answer is not HTTP this client accepts: {e}") from e
    if not 200 <= r.status_code < 300:
        raise Failure("upstream_error", 5, f"the upstream answered with an error status: {r.status_code}", r.status_code)
    try:
        return r.json()
    except ValueError as e:
        raise Failure("upstream_malformed", 4, "the upstream's answer is not JSON") from e


def error(status, body, retry=False):
    return JSONResponse(body, status_code=status, headers={"Retry-After": "1"} if retry else None)


def upstream_failure(code, started, attempts, detail, upstream_status=None):
    body = {"error": code, "status": 503, "time": elapsed_ms(started), "attempts": attempts}
    if upstream_status is not None:
        body["upstream_status"] = upstream_status
    body["detail"] = detail
    return error(503, body, retry=True)


def elapsed_ms(started):
    return int((time.monotonic() - started) * 1000)


def parse_timeout(params):
    """The caller's timeout in ms, or the 400's message."""
    if any(k != "timeout" for k in params.keys()):
        return UNKNOWN
    raw = params.get("timeout")
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 8:
        return RANGE
    ms = int(raw)
    return ms if TIMEOUT_MS_MIN <= ms <= TIMEOUT_MS_MAX else RANGE


@app.get("/api/smart")
async def smart(request: Request):
    started = time.monotonic()
    ms = parse_timeout(request.query_params)
    if isinstance(ms, str):
        return error(400, {"error": ms, "status": 400})
    deadline = started + ms / 1000
    hedge_at = started + HEDGE_AFTER
    client = request.app.state.client

    pending = {asyncio.create_task(attempt(client))}
    sent, hedged, worst = 1, False, None
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                return upstream_failure("upstream_timeout", started, sent,
                                        "no attempt answered successfully within the timeout")
            until = deadline if hedged else min(deadline, hedge_at)
            done, pending = await asyncio.wait(pending, timeout=until - now, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is None:
                    return {"time": elapsed_ms(started), "api": task.result(), "attempts": sent}
            for task in done:
                f = task.exception()
                if not isinstance(f, Failure):
                    f = Failure("upstream_unavailable", 3, f"the attempt failed: {f!r}")
                if worst is None or f.rank >= worst.rank:
                    worst = f
            if not hedged and (done or time.monotonic() >= hedge_at):
                hedged = True
                for _ in range(ATTEMPTS_MAX - sent):
                    pending.add(asyncio.create_task(attempt(client)))
                sent = ATTEMPTS_MAX
            elif hedged and not pending:
                return upstream_failure(worst.code, started, sent, worst.detail, worst.upstream_status)
    finally:
        for task in pending:
            task.cancel()

