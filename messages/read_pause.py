"""A connection's socket reads, paused while its consumer has bodies enough to work on: TCP
holds the broker back, instead of a small prefetch.

Why: the coordinator holds every update's deliveries unacked until its version commits,
and RabbitMQ counts a consumer's unacked deliveries against its prefetch. With the small
prefetch that bounds its memory (4 bodies), a consumer was full after 4 chunks and was
replaced by a new one (:class:`~.amqp._Inbox`): at P = 10M and 10 participants, about 50
basic.consume and basic.cancel a round, each a command in a quorum queue's log, and the
coordinator taking the last chunks of a round 0.7 s after the tenth update was confirmed.
With reads paused instead, the consumer's prefetch can be large (no replacement), and the
bodies read but not yet released stay as few as before: what the broker sends meanwhile
waits in its own memory (a reference to the message it holds anyway) and the socket's
buffers. Measured in bench/README ("Where a round's time goes").

What must stay true:
- Only a connection that carries nothing but one consumer's deliveries is paused (the
  coordinator's, ``consumers_apart``): a publish confirm or an RPC reply behind a paused
  read would wait for the consumer, and the consumer may be waiting for it.
- A pause never outlasts :data:`LONGEST_PAUSE` seconds at a time: aiormq closes a
  connection it has read nothing from for three heartbeat intervals. After that long the
  reads resume, and the next body read pauses them again (one more body per
  :data:`LONGEST_PAUSE` of a consumer that does not take its deliveries).
- A new connection (a reconnect) starts with its reads on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL

#: The longest a pause lasts before reads resume for a body; well under aiormq's 3
#: heartbeat intervals (60 s each by default) without a frame read.
LONGEST_PAUSE = 20.0


class PausableReads(TransportFactory):
    """aiormq's transport factory for a connection (TCP, or TLS for amqps://, as aiormq
    picks), keeping the socket transport it made last so that its reads can be paused."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._resume: asyncio.TimerHandle | None = None

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        inner = TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
        reader, writer = await inner.create(url, **kwargs)
        self.resume()  # whatever was paused was the old connection's
        self._transport = writer.transport  # type: ignore[assignment]
        return reader, writer

    @property
    def reading(self) -> bool:
        """Whether the socket is read now (asyncio's own flag of the transport)."""
        transport = self._transport
        return transport is not None and transport.is_reading()

    def pause(self) -> None:
        """Stop reading the socket, for at most :data:`LONGEST_PAUSE` seconds."""
        transport = self._transport
        if self._resume is not None or transport is None or transport.is_closing():
            return
        transport.pause_reading()
        self._resume = asyncio.get_running_loop().call_later(LONGEST_PAUSE, self.resume)

    def resume(self) -> None:
        if self._resume is None:
            return
        self._resume.cancel()
        self._resume = None
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
