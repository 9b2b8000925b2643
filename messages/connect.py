"""How a fedq process reaches the broker: :func:`open_transport`, whatever command asks.

Every command connects through here (the coordinator, participants, a simulation on
RabbitMQ, the dashboard, teardown, ``broker check``), so how a URL becomes a connection
(its scheme, TLS files, timeouts, the connection's name) is decided in one place, and a
transport of another kind would be added here. Today one kind is spoken: RabbitMQ through
aio-pika, ``amqp://`` and ``amqps://`` (:class:`~fedq.messages.amqp.AmqpTransport`).
"""

from __future__ import annotations

from fedq.messages.amqp import AmqpTransport

#: Seconds to wait for the broker to answer a first connection.
CONNECT_TIMEOUT = 10.0


def open_transport(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    name: str | None = None,
    consumers_apart: bool = False,
) -> AmqpTransport:
    """The transport for ``url``, not yet connected (``async with`` connects and closes
    it). A URL it cannot use is BrokerUnavailable at once, one line saying what a URL
    looks like; a broker that does not answer is the same, on connecting.
    ``consumers_apart``: each consumer on a connection of its own (the coordinator's:
    what one queue's messages do to a connection must not stop the others)."""
    return AmqpTransport(
        url, connect_timeout=connect_timeout, name=name, consumers_apart=consumers_apart
    )
