"""The dashboard's web side: a Starlette app served by uvicorn inside the caller's loop.

Routes: ``/`` the page (one HTML document, its script and style inline: nothing to build,
nothing fetched from the internet), ``/events`` the board as server-sent events (on every
change, at most four a second, and at least every second), ``/api/state`` the same JSON
once, ``/api/rejections`` a page of one federation's DLQ from its ledger, ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from fedq import strict_json
from fedq.coordinator.ledger_schema import LedgerError
from fedq.coordinator.roster import Roster
from fedq.dashboard.board import Board
from fedq.dashboard.ledgers import page_of_rejections
from fedq.dashboard.page import PAGE
from fedq.management import default_management_url
from fedq.messages.connect import open_transport

log = logging.getLogger("fedq.dashboard")

DEFAULT_PORT = 8750
#: Fastest and slowest pace of the event stream, in seconds.
_MIN_PUSH, _MAX_PUSH = 0.25, 1.0


class DashboardError(RuntimeError):
    """The dashboard cannot start as asked; the message says what to do."""


def create_app(board: Board) -> Starlette:
    """The web app of ``board``; its lifespan runs the board's refresh loops."""

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def state(request: Request) -> Response:
        return _json(board.snapshot())

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"  # the browser reconnects this soon if the dashboard restarts
            while not board.closing.is_set():
                yield f"data: {_dumps(board.snapshot())}\n\n"
                await asyncio.sleep(_MIN_PUSH)
                await board.changed(within=_MAX_PUSH - _MIN_PUSH)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def rejections(request: Request) -> Response:
        federation = request.query_params.get("federation", "")
        path = board.ledger_paths.get(federation)
        if path is None:
            return _json({"error": f"no ledger of federation {federation!r}"}, status=404)
        try:
            before = request.query_params.get("before_id")
            limit = min(200, int(request.query_params.get("limit", "50")))
            rows = await asyncio.to_thread(
                page_of_rejections,
                path,
                limit=limit,
                before_id=int(before) if before else None,
                reason=request.query_params.get("reason") or None,
            )
        except ValueError:
            return _json({"error": "before_id and limit must be integers"}, status=400)
        except sqlite3.Error as exc:
            return _json({"error": f"cannot read the ledger {path}: {exc}"}, status=503)
        except LedgerError as exc:  # another fedq's, or not created yet
            return _json({"error": str(exc)}, status=503)
        return _json({"federation": federation, "rejections": rows})

    async def healthz(request: Request) -> Response:
        return _json({"ok": True})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        running = asyncio.create_task(board.run(), name="fedq-dashboard-board")
        try:
            yield
        finally:
            board.close()
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    return Starlette(
        routes=[
            Route("/", page),
            Route("/events", events),
            Route("/api/state", state),
            Route("/api/rejections", rejections),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )


async def serve(
    state_dir: Path,
    broker_url: str,
    management_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    roster: Roster | None = None,
) -> None:
    """Serve the dashboard on http://host:port/ until cancelled, then shut down cleanly.
    With a ``roster``, only the participants it names are shown.

    Raises DashboardError (before serving) for a URL that cannot be right or a port that
    cannot be had. A broker or management API that is down is not an error: the page says
    so, and the dashboard picks them up when they are back.
    """
    open_transport(broker_url)  # raises BrokerUnavailable, saying what to do, for a bad URL
    management_url = management_url or default_management_url(broker_url)
    if not management_url.startswith(("http://", "https://")):
        raise DashboardError(f"bad --management-url {management_url!r}: expected http://host:15672")
    board = Board(state_dir, broker_url, management_url, roster=roster)
    listening = _listen(host, port)
    server = _Server(
        uvicorn.Config(
            create_app(board),
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=3,
        )
    )
    serving = asyncio.create_task(server.serve(sockets=[listening]), name="fedq-dashboard")
    try:
        await asyncio.shield(serving)
    finally:
        board.close()
        server.should_exit = True
        await serving


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the caller owns the signals and cancels us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, made here so that a taken port is one clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise DashboardError(f"cannot listen on {host}:{port}: {exc}: check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise DashboardError(
            f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port"
        ) from None
    sock.setblocking(False)
    return sock


def _dumps(value: Any) -> str:
    return strict_json.dumps(value, separators=(",", ":"))


def _json(value: Any, status: int = 200) -> Response:
    return Response(_dumps(value), status_code=status, media_type="application/json")
