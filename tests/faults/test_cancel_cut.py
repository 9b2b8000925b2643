"""A consumer stopped, or started, at the very moment the broker closes the connection: the
broker's Connection.Close (CONNECTION_FORCED, what ``rabbitmqctl stop_app`` sends every
client) arrives while the client's basic.cancel, basic.qos or basic.consume is in flight.
A participant is there each time it releases its queue to train and takes it back after; a
broker restart landing then ended the participant (issue 22, finding 10, and the
broker-restart suite's collecting case for the start). Made exact by a proxy in front of
the real broker that answers the first such method it sees with that Connection.Close, as
the broker would, and cuts the connection; every other byte passes through, and the robust
connection reconnects through it to the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

import pytest
import yarl

from fedq.messages.amqp import AmqpTransport
from tests.conftest import BROKER_URL

pytestmark = pytest.mark.broker

FRAME_END = b"\xce"
METHOD = 1
BASIC_CANCEL = (60, 30)
BASIC_QOS = (60, 10)
BASIC_CONSUME = (60, 20)


def connection_close(
    text: bytes = b"CONNECTION_FORCED - broker forced connection closure",
) -> bytes:
    """Connection.Close, reply 320, on channel 0: what a broker shutting down sends."""
    payload = struct.pack(">HHHB", 10, 50, 320, len(text)) + text + struct.pack(">HH", 0, 0)
    return struct.pack(">BHI", METHOD, 0, len(payload)) + payload + FRAME_END


class MethodCutter:
    """A TCP proxy to the broker that, once armed, answers the next ``method`` (class and
    method id) with a Connection.Close instead of passing it on, then drops that
    connection."""

    def __init__(self, upstream: tuple[str, int], method: tuple[int, int]) -> None:
        self.upstream = upstream
        self.method = method
        self.armed = False
        self.cut = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection(*self.upstream)
        down = asyncio.create_task(self._pipe(broker_r, client_w))
        try:
            broker_w.write(await client_r.readexactly(8))  # the protocol header
            while True:
                header = await client_r.readexactly(7)
                kind, _, size = struct.unpack(">BHI", header)
                frame = header + await client_r.readexactly(size + 1)
                if (
                    self.armed
                    and kind == METHOD
                    and struct.unpack(">HH", frame[7:11]) == self.method
                ):
                    self.armed = False
                    down.cancel()
                    client_w.write(connection_close())
                    await client_w.drain()
                    self.cut.set()
                    return
                broker_w.write(frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            down.cancel()
            broker_w.close()
            with contextlib.suppress(Exception):
                await client_r.read()  # the client's Close-Ok, then its end
            client_w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()


@contextlib.asynccontextmanager
async def cut_transport(
    federation: str, method: tuple[int, int]
) -> AsyncIterator[tuple[MethodCutter, AmqpTransport, str]]:
    """A transport connected through a cutter of ``method``, and a queue of its own."""
    broker = yarl.URL(BROKER_URL)
    cutter = MethodCutter((broker.host or "127.0.0.1", broker.port or 5672), method)
    await cutter.start()
    url = str(broker.with_host("127.0.0.1").with_port(cutter.port))
    queue = f"fedq.{federation}.cut"
    transport = AmqpTransport(url)
    await transport.connect()
    try:
        await transport.declare_queue(queue)
        yield cutter, transport, queue
    finally:
        with contextlib.suppress(Exception):
            await transport.delete_queue(queue)
        await transport.close()
        await cutter.stop()


async def consumed_after(transport: AmqpTransport, queue: str) -> None:
    """The transport goes on on a new connection: publish, consume, ack."""
    await transport.publish("", queue, b"after", message_id="after")
    async with transport.consume(queue, prefetch=1) as inbox:
        delivery = await asyncio.wait_for(anext(inbox), 30)
        assert delivery.body == b"after"
        await delivery.ack()


async def test_a_consumer_stopped_as_the_broker_closes_the_connection(federation: str) -> None:
    async with cut_transport(federation, BASIC_CANCEL) as (cutter, transport, queue):
        async with transport.consume(queue, prefetch=1):
            cutter.armed = True
        # Leaving the consumer sent basic.cancel, answered by the Close.
        assert cutter.cut.is_set()
        await consumed_after(transport, queue)


@pytest.mark.parametrize("method", [BASIC_QOS, BASIC_CONSUME], ids=["basic.qos", "basic.consume"])
async def test_a_consumer_started_as_the_broker_closes_the_connection_starts_once_it_is_back(
    federation: str, method: tuple[int, int]
) -> None:
    """Without the retry in ``AmqpTransport._start_consumer`` the client's own
    ConnectionClosed escapes ``consume``, which ended a participant."""
    async with cut_transport(federation, method) as (cutter, transport, queue):
        await transport.publish("", queue, b"before", message_id="before")
        cutter.armed = True
        async with transport.consume(queue, prefetch=1) as inbox:
            assert cutter.cut.is_set()
            delivery = await asyncio.wait_for(anext(inbox), 30)
            assert delivery.body == b"before"
            await delivery.ack()
        await consumed_after(transport, queue)
