"""Publishing messages whose properties no well-behaved client would write, and RabbitMQ
accepts (it refuses some others, such as a header of an unknown field type, by closing the
publisher's connection).

RabbitMQ passes a content header's properties through as the publisher wrote them. To
write bytes a client library refuses to encode (a ``message_id`` that is not UTF-8, a
header table with an unknown field type or nested beyond any decoder's stack), the
properties are encoded as usual around placeholders, which are then swapped for the raw
bytes at the same length. aiormq sends the header frame that results as it is.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiormq
from pamqp.commands import Basic


class TamperedProperties(Basic.Properties):
    """Properties whose encoding has each placeholder replaced by raw bytes of equal
    length."""

    def __init__(self, swaps: Mapping[bytes, bytes], **properties: Any) -> None:
        super().__init__(**properties)
        self._swaps = dict(swaps)

    def marshal(self) -> bytes:
        encoded = super().marshal()
        for placeholder, raw in self._swaps.items():
            assert len(placeholder) == len(raw), "a swap must keep every length as it is"
            assert encoded.count(placeholder) == 1, f"placeholder {placeholder!r} not unique"
            encoded = encoded.replace(placeholder, raw)
        return encoded


@dataclass(frozen=True)
class Tampering:
    """One way to break a message's properties: ``properties`` to encode, then the swaps."""

    name: str
    properties: dict[str, Any]
    swaps: dict[bytes, bytes]


def _nested_table(depth: int) -> tuple[dict[str, Any], dict[bytes, bytes]]:
    """A header holding a table nested ``depth`` deep: encoded with one level, its
    placeholder string then replaced by ``depth - 1`` more levels of tables (each level is
    7 bytes: key length, key, 'F', table length)."""
    # Inside out: the innermost table is empty, each level wraps the one inside it.
    body = b""
    for _ in range(depth):
        body = b"\x01kF" + struct.pack(">I", len(body)) + body
    value = body[2:]  # the outermost level's value: 'F', its length, what it holds
    text = "P" * (len(value) - 5)  # encoded as 'S', 4 length bytes, the text
    placeholder = b"S" + struct.pack(">I", len(text)) + text.encode()
    return {"deep": text}, {placeholder: value}


def tamperings(user: str | None) -> list[Tampering]:
    """Each kind of property the client cannot decode, as its own message."""
    ident = {"user_id": user} if user else {}
    deep_headers, deep_swaps = _nested_table(3000)
    not_utf8 = b"\xff\xfe\xfd\xfc"
    return [
        Tampering("message_id not UTF-8", {"message_id": "MIDX", **ident}, {b"MIDX": not_utf8}),
        Tampering("type not UTF-8", {"message_type": "TYPX", **ident}, {b"TYPX": not_utf8}),
        Tampering("header name not UTF-8", {"headers": {"KEYX": 1}, **ident}, {b"KEYX": not_utf8}),
        Tampering("header table nested 3000 deep", {"headers": deep_headers, **ident}, deep_swaps),
        Tampering(
            "timestamp beyond any date",
            {"timestamp": datetime.fromtimestamp(1_700_000_000, tz=UTC), **ident},
            {struct.pack(">Q", 1_700_000_000): b"\x7f" + b"\xff" * 7},
        ),
    ]


async def publish_tampered(
    url: str, exchange: str, routing_key: str, body: bytes, tampering: Tampering
) -> None:
    """Publish ``body`` with ``tampering``'s properties, confirmed by the broker."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        properties = TamperedProperties(
            tampering.swaps, **{"delivery_mode": 2, **tampering.properties}
        )
        confirmation = await channel.basic_publish(
            body, exchange=exchange, routing_key=routing_key, properties=properties
        )
        assert isinstance(confirmation, Basic.Ack), f"refused {tampering.name}: {confirmation}"
    finally:
        await connection.close()
