"""What every command shares: a user's mistake is a :class:`Failure` (one line, exit 2,
printed by :func:`fedq.cli.main` after every display stopped), a run is cancelled cleanly
by SIGINT or SIGTERM, and logging is quiet unless asked for, one line of visible characters a
record."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable
from typing import TypeVar

from fedq.console import console
from fedq.coordinator.checkpoint import CheckpointError
from fedq.coordinator.config import ConfigError
from fedq.coordinator.ledger_schema import LedgerError
from fedq.coordinator.version import NonFiniteModel
from fedq.messages.amqp import BrokerUnavailable
from fedq.messages.transport import TransportError
from fedq.output import OutputSettings
from fedq.participant.app import App, AppError, load_app
from fedq.runtime.printable import printable
from fedq.settings import settings

T = TypeVar("T")


class Failure(Exception):
    """A run ended on a user-facing error; ``main`` prints it after every display stopped."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def fail(message: str) -> Failure:
    """A mistake in the command's flags: raise what this returns."""
    return Failure(message)


#: Exit status of a run stopped by a signal: 128 + its number, as a shell reports it
#: (SIGINT 130, SIGTERM 143), so a supervisor tells a stop it asked for from a Ctrl-C.
STOPPED_BY = {signal.SIGINT: 130, signal.SIGTERM: 143}


def run(coro: Awaitable[T]) -> T:
    """Run ``coro``; SIGINT/SIGTERM cancel it (nothing uncommitted is acked) and the run
    ends with status 130 or 143 (:data:`STOPPED_BY`)."""
    received: list[signal.Signals] = []

    async def main() -> T:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()

        def stop(sig: signal.Signals) -> None:
            received.append(sig)
            task.cancel()

        for sig in STOPPED_BY:
            loop.add_signal_handler(sig, stop, sig)
        return await task

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        sig = received[0] if received else signal.SIGINT
        raise Failure(
            f"stopped by {sig.name}; uncommitted updates stay on the broker", STOPPED_BY[sig]
        ) from None
    except (
        AppError,
        BrokerUnavailable,
        CheckpointError,
        ConfigError,
        LedgerError,
        NonFiniteModel,
    ) as exc:
        raise Failure(str(exc)) from None
    except TransportError as exc:
        raise Failure(f"broker error: {exc}") from None


class PrintableFormatter(logging.Formatter):
    """One record, one line of visible characters: a log message quotes what senders wrote
    (ids, reasons, a malformed message's fields), and a terminal or a log viewer obeys the
    control characters in it (``\x1b[2J`` clears the screen, ``\n`` forges a line), so they
    are escaped (:func:`~fedq.runtime.printable.printable`). A traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record), limit=None)


def setup_logging(
    verbose: bool,
    output: OutputSettings | None = None,
    role: str = "fedq",
    federation: str | None = None,
) -> None:
    """Log records at ``FEDQ_LOG_LEVEL`` (INFO with ``verbose``), written as ``output``'s
    ``--log-format`` says (:mod:`fedq.output`), and so is everything the console prints."""
    level = logging.INFO if verbose else getattr(logging, settings().log_level.upper(), 30)
    handler = logging.StreamHandler()
    handler.setFormatter(PrintableFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if output is not None:
        console.use(output.log_format, role, federation)
    for noisy in ("tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # The broker client logs each failed connection attempt; fedq reports them in one line.
    for client in ("aiormq", "aio_pika"):
        logging.getLogger(client).setLevel(level if verbose else logging.CRITICAL)


def load(spec: str) -> App:
    """The app ``spec`` names, or a Failure saying why it cannot be loaded."""
    try:
        return load_app(spec)
    except AppError as exc:
        raise fail(str(exc)) from None
