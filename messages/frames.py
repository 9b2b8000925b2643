"""Content headers the AMQP client cannot decode become deliveries that can be refused.

RabbitMQ passes a message's properties through as the publisher wrote them: it does not
check that a ``message_id`` or ``type`` is UTF-8, that a header table holds only known
field types, nests only so deep, or that a timestamp is a date. The client does, while
reading frames: pamqp raises, aiormq's frame reader dies with it, and the whole connection
goes down, every consumer and publisher on it. The broker then requeues the message and
delivers it again after the reconnect, forever. One message published on a participant's
own permitted routing key would so stop the coordinator.

:func:`install` wraps pamqp's frame decoder, which aiormq looks up on every frame: a
content header whose properties fail to decode (in pamqp, or in aio-pika's conversion of
them into a message) is replaced by one with the same weight and body size, so the body
frames that follow are read as usual, and no properties but one header,
:data:`UNDECODABLE_HEADER`, saying what failed. The delivery then reaches fedq like any
other and is settled there: refused with reason ``undecodable`` (its body to the
dead-letter queue) or, on the control queue, ignored and acked. A publisher who sets that
header itself only gets its own message refused.

What must stay true: a method or body frame, or a header frame whose fixed part (class,
weight, body size) cannot be read, still fails as before, since nothing could be
delivered from it; and the wrapper never changes a header that decodes.
"""

from __future__ import annotations

import struct

import aio_pika
import pamqp.frame
from aio_pika.message import decode_expiration, decode_timestamp
from pamqp import constants
from pamqp.commands import Basic
from pamqp.header import ContentHeader

#: The one header of a delivery whose properties could not be decoded: what failed.
UNDECODABLE_HEADER = "x-fedq-undecodable"
#: The longest description of the failure carried in that header.
MAX_DETAIL_CHARS = 200

_original_unmarshal = pamqp.frame.unmarshal


def install() -> None:
    """Make every aiormq connection of this process tolerate undecodable properties.
    Idempotent."""
    pamqp.frame.unmarshal = tolerant_unmarshal


def tolerant_unmarshal(data_in: bytes) -> tuple[int, int, pamqp.frame.FrameTypes]:
    """pamqp's ``frame.unmarshal``, except that a content header whose properties do not
    decode comes back as a header carrying only :data:`UNDECODABLE_HEADER`."""
    try:
        consumed, channel, frame = _original_unmarshal(data_in)
    except Exception as exc:
        replaced = _undecodable_header(data_in, exc)
        if replaced is None:
            raise
        return replaced
    if isinstance(frame, ContentHeader):
        failure = _client_failure(frame.properties)
        if failure is not None:
            return consumed, channel, _marked(frame.weight, frame.body_size, failure)
    return consumed, channel, frame


def _undecodable_header(data: bytes, exc: BaseException) -> tuple[int, int, ContentHeader] | None:
    """The replacement of a content header frame pamqp failed on, or None when ``data``
    is not one whose fixed part can be read."""
    try:
        frame_type, channel, size = struct.unpack_from(">BHI", data)
        end = constants.FRAME_HEADER_SIZE + size
        if frame_type != constants.FRAME_HEADER or len(data) <= end:
            return None
        if data[end] != constants.FRAME_END:
            return None
        _, weight, body_size = struct.unpack_from(">HHQ", data, constants.FRAME_HEADER_SIZE)
    except struct.error:
        return None
    detail = f"{exc.__class__.__name__}: {exc}"
    return end + 1, channel, _marked(weight, body_size, detail)


def _client_failure(properties: Basic.Properties) -> str | None:
    """What aio-pika would fail on when it turns ``properties`` into a message (its
    consumer callback would raise, and the delivery would stay unacked), or None."""
    try:
        aio_pika.Message(
            b"",
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            headers=properties.headers,
            delivery_mode=properties.delivery_mode,
            priority=properties.priority,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            expiration=decode_expiration(properties.expiration),
            message_id=properties.message_id,
            timestamp=decode_timestamp(properties.timestamp),
            type=properties.message_type,
            user_id=properties.user_id,
            app_id=properties.app_id,
        )
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


def _marked(weight: int, body_size: int, detail: str) -> ContentHeader:
    text = detail if len(detail) <= MAX_DETAIL_CHARS else detail[: MAX_DETAIL_CHARS - 1] + "…"
    properties = Basic.Properties(headers={UNDECODABLE_HEADER: f"properties: {text}"})
    return ContentHeader(weight, body_size, properties)
