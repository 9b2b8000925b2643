"""The semantics both transports share; the embedded broker must behave as RabbitMQ does."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from fedq.messages.transport import (
    Delivery,
    Locked,
    QueueDeleted,
    QueueFull,
    Transport,
    TransportError,
    Unroutable,
)
from tests.helpers import took_lock, until_async


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"fedq.test-{tag}.x", f"fedq.test-{tag}.q"


async def next_delivery(deliveries: AsyncIterator[Delivery]) -> Delivery:
    return await asyncio.wait_for(anext(deliveries), 5.0)


async def nothing_more(pub: Transport, queue: str, deliveries: AsyncIterator[Delivery]) -> bool:
    """Nothing else was due to ``deliveries`` (a consumer with room in its window): a
    marker published to ``queue`` now is its next delivery. Waiting a while for nothing
    would also pass on a broker that had just not had the time to deliver."""
    marker = f"marker-{uuid.uuid4().hex}".encode()
    await pub.publish("", queue, marker)
    got = await next_delivery(deliveries)
    await got.ack()
    return bytes(got.body) == marker


@contextlib.asynccontextmanager
async def taken_by_another(transport: Transport, queue: str) -> AsyncIterator[bytes]:
    """The next ready message of ``queue``, as a second consumer gets it (held, unacked,
    until the block ends). That it gets it proves the first consumer, its window full,
    was not given it: the broker had it ready and the chance to deliver it."""
    async with transport.consume(queue, prefetch=1) as other:
        yield bytes((await next_delivery(other)).body)


async def test_direct_exchange_routes_by_key_with_properties(transport_pair):
    pub, sub = transport_pair
    exchange, queue = names()
    await pub.declare_exchange(exchange, "direct")
    await pub.declare_queue(queue)
    await pub.bind(queue, exchange, "update")
    await pub.publish(exchange, "other", b"lost")
    await pub.publish(
        exchange, "update", b"\x00body", message_id="m-1", type="t.v1", headers={"round": 3}
    )
    try:
        async with sub.consume(queue, prefetch=10) as deliveries:
            got = await next_delivery(deliveries)
            assert (bytes(got.body), got.message_id, got.type) == (b"\x00body", "m-1", "t.v1")
            assert got.headers["round"] == 3
            assert got.user_id == pub.identity
            assert got.routing_key == "update"
            assert not got.redelivered
            await got.ack()
            assert await nothing_more(pub, queue, deliveries)
    finally:
        await pub.delete_queue(queue)
        await pub.delete_exchange(exchange)


async def test_fanout_reaches_every_bound_queue_and_topic_matches_patterns(transport_pair):
    pub, sub = transport_pair
    fanout, q1 = names()
    topic, q2 = names()
    await pub.declare_exchange(fanout, "fanout")
    await pub.declare_exchange(topic, "topic")
    for q in (q1, q2):
        await pub.declare_queue(q)
        await pub.bind(q, fanout)
    await pub.bind(q2, topic, "join.*")
    await pub.publish(fanout, "", b"model")
    await pub.publish(topic, "join.p1", b"join")
    await pub.publish(topic, "leave.p1", b"leave")
    try:
        assert await sub.queue_depth(q1) == 1
        assert await sub.queue_depth(q2) == 2
        async with sub.consume(q2, prefetch=10) as deliveries:
            got = [await next_delivery(deliveries) for _ in range(2)]
            bodies = [bytes(d.body) for d in got]
            keys = [d.routing_key for d in got]
        assert bodies == [b"model", b"join"]
        assert keys == ["", "join.p1"]
    finally:
        for q in (q1, q2):
            await pub.delete_queue(q)
        for x in (fanout, topic):
            await pub.delete_exchange(x)


async def test_default_exchange_routes_to_the_queue_named_by_the_key(transport_pair):
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue)
    await pub.publish("", queue, b"direct to you")
    try:
        async with sub.consume(queue, prefetch=1) as deliveries:
            assert bytes((await next_delivery(deliveries)).body) == b"direct to you"
    finally:
        await pub.delete_queue(queue)


async def test_mandatory_publish_without_a_queue_is_unroutable(transport_pair):
    pub, _ = transport_pair
    exchange, _ = names()
    await pub.declare_exchange(exchange, "direct")
    try:
        with pytest.raises(Unroutable):
            await pub.publish(exchange, "nobody", b"x", mandatory=True)
        await pub.publish(exchange, "nobody", b"x")  # not mandatory: dropped silently
    finally:
        await pub.delete_exchange(exchange)


async def test_max_length_one_drop_head_keeps_only_the_newest(transport_pair):
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue, arguments={"x-max-length": 1, "x-overflow": "drop-head"})
    for version in range(3):
        await pub.publish("", queue, f"model v{version}".encode())
    try:
        assert await sub.queue_depth(queue) == 1
        async with sub.consume(queue, prefetch=5) as deliveries:
            latest = await next_delivery(deliveries)
            assert bytes(latest.body) == b"model v2"
            await latest.ack()
            assert await nothing_more(pub, queue, deliveries)
    finally:
        await pub.delete_queue(queue)


async def test_max_length_bytes_drop_head_keeps_the_newest_that_fit(transport_pair):
    """A chunked model's queue: bounded by bytes, the oldest ready messages go first, and
    delivered (unacked) ones do not count."""
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue, arguments={"x-max-length-bytes": 25, "x-overflow": "drop-head"})
    try:
        async with sub.consume(queue, prefetch=1) as deliveries:
            await pub.publish("", queue, b"held-chunk")  # 10 bytes, delivered and kept unacked
            held = await next_delivery(deliveries)
            for index in range(4):
                await pub.publish("", queue, f"chunk-{index}-10".encode())  # 10 bytes each
            assert await sub.queue_depth(queue) == 2  # 20 of 25 bytes: chunk 2 and chunk 3
            await held.ack()
            kept = []
            for _ in range(2):
                delivery = await next_delivery(deliveries)
                kept.append(bytes(delivery.body))
                await delivery.ack()
            assert kept == [b"chunk-2-10", b"chunk-3-10"]
    finally:
        await pub.delete_queue(queue)


async def test_a_full_reject_publish_queue_refuses_and_keeps_what_it_had(transport_pair):
    """The updates queue: past its byte limit a publish is refused (basic.nack), not
    accepted and dropped, so the sender knows to publish again; room frees as it drains."""
    pub, sub = transport_pair
    _, queue = names()
    arguments = {"x-max-length-bytes": 25, "x-overflow": "reject-publish"}
    await pub.declare_queue(queue, arguments=arguments)
    try:
        await pub.publish("", queue, b"update-0-10")
        await pub.publish("", queue, b"update-1-10")
        with pytest.raises(QueueFull):
            await pub.publish("", queue, b"update-2-10")
        assert await sub.queue_depth(queue) == 2
        async with sub.consume(queue, prefetch=1) as deliveries:
            first = await next_delivery(deliveries)
            assert bytes(first.body) == b"update-0-10"
            await first.ack()
            await pub.publish("", queue, b"update-2-10")
            later = []
            for _ in range(2):
                delivery = await next_delivery(deliveries)
                later.append(bytes(delivery.body))
                await delivery.ack()
            assert later == [b"update-1-10", b"update-2-10"]
    finally:
        await pub.delete_queue(queue)


async def test_a_queue_counts_its_consumers(transport_pair):
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue)
    try:
        assert await pub.queue_consumers(queue) == 0
        async with sub.consume(queue, prefetch=1):
            assert await pub.queue_consumers(queue) == 1
        assert await pub.queue_consumers(queue) == 0
    finally:
        await pub.delete_queue(queue)


async def test_a_lock_is_held_by_one_connection_until_it_closes(transport_pair):
    """What keeps two coordinators off one federation: the second is refused while the
    first lives, and gets the lock once the first's connection is gone."""
    first, second = transport_pair
    lock = f"t.lock.{uuid.uuid4().hex[:8]}"
    await first.hold(lock)
    await first.hold(lock)  # holding it again is no error
    with pytest.raises(Locked):
        await second.hold(lock)
    await second.release(lock)  # not its lock: nothing happens
    with pytest.raises(Locked):
        await second.hold(lock)
    await first.release(lock)
    await second.hold(lock)  # let go of with the connection still open
    await second.release(lock)
    await first.hold(lock)
    await first.close()

    await until_async(
        lambda: took_lock(second, lock), what="the lock to pass once its holder closed"
    )


async def test_unacked_deliveries_come_back_redelivered_in_order(transport_pair):
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue)
    for i in range(3):
        await pub.publish("", queue, b"%d" % i, message_id=str(i))
    try:
        async with sub.consume(queue, prefetch=10) as deliveries:
            first = await next_delivery(deliveries)
            await first.ack()
            await next_delivery(deliveries)  # taken, never acked
            await next_delivery(deliveries)
        async with sub.consume(queue, prefetch=10) as deliveries:
            again = [await next_delivery(deliveries) for _ in range(2)]
            assert [d.message_id for d in again] == ["1", "2"]
            assert all(d.redelivered for d in again)
            for d in again:
                await d.ack()
            assert await nothing_more(pub, queue, deliveries)
    finally:
        await pub.delete_queue(queue)


async def test_settling_a_delivery_after_its_consumer_closed_fails_and_loses_nothing(
    transport_pair,
):
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue)
    await pub.publish("", queue, b"kept", message_id="0")
    try:
        async with sub.consume(queue, prefetch=1) as deliveries:
            late = await next_delivery(deliveries)
        for settle in (late.ack(), late.nack(requeue=False)):
            with pytest.raises(TransportError):
                await settle
        async with sub.consume(queue, prefetch=1) as deliveries:
            again = await next_delivery(deliveries)
            assert (again.message_id, again.redelivered) == ("0", True)
            await again.ack()
            assert await nothing_more(pub, queue, deliveries)
    finally:
        await pub.delete_queue(queue)


async def test_prefetch_bounds_unacked_deliveries(transport_pair):
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue)
    for i in range(3):
        await pub.publish("", queue, b"%d" % i)
    try:
        async with sub.consume(queue, prefetch=2) as deliveries:
            a = await next_delivery(deliveries)
            await next_delivery(deliveries)
            async with taken_by_another(pub, queue) as third:  # not given to the full window
                assert third == b"2"
            await a.ack()  # "2" returned to the head of the queue: now the window has room
            assert bytes((await next_delivery(deliveries)).body) == b"2"
    finally:
        await pub.delete_queue(queue)


@pytest.mark.parametrize("arguments", [{}, {"x-queue-type": "quorum"}], ids=["classic", "quorum"])
async def test_released_deliveries_do_not_count_toward_the_prefetch(transport_pair, arguments):
    """What lets the coordinator hold K updates until its commit with a prefetch of a few:
    only unreleased deliveries (bodies in memory) fill the window."""
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue, arguments=arguments)
    for i in range(7):
        await pub.publish("", queue, b"%d" % i)
    try:
        # Other consumers take (and hold) what the full window is not given: "2", then "5".
        async with sub.consume(queue, prefetch=2) as deliveries:
            held = [await next_delivery(deliveries), await next_delivery(deliveries)]
            async with taken_by_another(pub, queue) as second:
                assert second == b"2"
                for delivery in held:
                    delivery.release_body()
                fresh = [await next_delivery(deliveries), await next_delivery(deliveries)]
                assert [bytes(d.body) for d in fresh] == [b"3", b"4"]
                async with taken_by_another(pub, queue) as third:  # two unreleased: full again
                    assert third == b"5"
                    await fresh[0].ack()
                    last = await next_delivery(deliveries)
                    assert bytes(last.body) == b"6"
                    for delivery in held:  # released, still ackable
                        await delivery.ack()
        # Leaving requeued the unacked 2, 4, 5 and 6. (A quorum queue takes returns back
        # through its log: its count catches up within moments.)
        await until_async(
            lambda: sub.queue_depth(queue), lambda d: d == 4, what="4 messages back in the queue"
        )
    finally:
        await pub.delete_queue(queue)


@pytest.mark.parametrize("arguments", [{}, {"x-queue-type": "quorum"}], ids=["classic", "quorum"])
async def test_a_window_of_four_holds_four_bodies_and_refills_once_they_are_released(
    transport_pair, arguments
):
    """The coordinator's window (4): the AMQP transport splits it between two consumers of
    2, so that one still takes deliveries while the other is replaced; together they must
    still hold no more than 4 unreleased bodies, and refill as bodies are released."""
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue, arguments=arguments)
    for i in range(10):
        await pub.publish("", queue, b"%d" % i)
    try:
        async with sub.consume(queue, prefetch=4) as deliveries:
            first = [await next_delivery(deliveries) for _ in range(4)]
            assert sorted(bytes(d.body) for d in first) == [b"0", b"1", b"2", b"3"]
            async with taken_by_another(pub, queue) as fifth:  # four unreleased: full
                assert fifth == b"4"
                for delivery in first:
                    delivery.release_body()
                again = [await next_delivery(deliveries) for _ in range(4)]
                assert sorted(bytes(d.body) for d in again) == [b"5", b"6", b"7", b"8"]
                async with taken_by_another(pub, queue) as last:  # full again
                    assert last == b"9"
                for delivery in first:  # released, still ackable
                    await delivery.ack()
    finally:
        await pub.delete_queue(queue)


async def test_nack_without_requeue_drops_and_with_requeue_redelivers(transport_pair):
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue)
    await pub.publish("", queue, b"a")
    await pub.publish("", queue, b"b")
    try:
        async with sub.consume(queue, prefetch=1) as deliveries:
            await (await next_delivery(deliveries)).nack(requeue=False)
            b = await next_delivery(deliveries)
            await b.nack(requeue=True)
            again = await next_delivery(deliveries)
            assert (bytes(again.body), again.redelivered) == (b"b", True)
            await again.ack()
    finally:
        await pub.delete_queue(queue)


async def test_redeclaring_a_queue_with_other_arguments_fails_clearly(transport_pair):
    pub, _ = transport_pair
    _, queue = names()
    await pub.declare_queue(queue, arguments={"x-max-length": 1})
    try:
        await pub.declare_queue(queue, arguments={"x-max-length": 1})  # idempotent
        with pytest.raises(TransportError):
            await pub.declare_queue(queue, arguments={"x-max-length": 2})
        await pub.publish("", queue, b"still usable")
        assert await pub.queue_depth(queue) == 1
    finally:
        await pub.delete_queue(queue)


async def test_consuming_a_missing_queue_fails_clearly(transport_pair):
    _, sub = transport_pair
    _, queue = names()
    with pytest.raises(TransportError):
        async with sub.consume(queue, prefetch=1):
            pass


async def test_a_consumer_whose_queue_is_deleted_ends_with_queue_deleted(transport_pair):
    """``fedq teardown --force`` under a running process: what consumed the queue stops,
    instead of waiting forever for what can no longer arrive."""
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue, durable=False)
    async with sub.consume(queue, prefetch=1) as deliveries:
        await pub.publish("", queue, b"one")
        first = await next_delivery(deliveries)
        await first.ack()
        waiting = asyncio.ensure_future(anext(deliveries))
        await pub.delete_queue(queue)
        with pytest.raises(QueueDeleted, match=queue):
            await asyncio.wait_for(waiting, 10)
        with pytest.raises(QueueDeleted):  # and it stays ended
            await next_delivery(deliveries)


async def test_a_consumer_polled_with_short_timeouts_ends_when_its_queue_goes(transport_pair):
    """The coordinator polls its deliveries with timeouts of a few milliseconds. A timeout
    that cancels the wait while the consumer asks the broker whether its queue still
    exists must neither lose the broker's cancel (the consumer then waited forever) nor
    break the connection (aiormq closed the half-opened channel, and RabbitMQ closed the
    connection: CHANNEL_ERROR - expected 'channel.open')."""
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue, durable=False)
    async with sub.consume(queue, prefetch=4) as deliveries:
        await pub.delete_queue(queue)
        deadline = time.monotonic() + 10
        with pytest.raises(QueueDeleted, match=queue):
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(anext(deliveries), 0.001)
    _, other = names()
    await sub.declare_queue(other, durable=False)  # the connection still serves
    try:
        await pub.publish("", other, b"after")
        async with sub.consume(other, prefetch=1) as deliveries:
            assert (await next_delivery(deliveries)).body == b"after"
    finally:
        await pub.delete_queue(other)


async def test_declarations_cancelled_at_any_moment_leave_the_connection_up(transport_pair):
    """Asking about a queue that is gone (RabbitMQ closes the channel: NOT_FOUND), cancelled
    at every moment from the call on: aiormq, cancelled mid-RPC, reused the channel's number
    before RabbitMQ had closed it, and RabbitMQ closed the whole connection (CHANNEL_ERROR -
    second 'channel.open' seen), sending back to the queue the delivery held unacked. It
    still did so about once in 15 runs, in CI too, by two more ways, whenever RabbitMQ
    closes a channel (fedq.messages.channel_closing, tests/test_amqp_channel_closing.py)."""
    pub, sub = transport_pair
    _, queue = names()
    _, gone = names()
    await pub.declare_queue(queue)
    try:
        await pub.publish("", queue, b"held")
        async with sub.consume(queue, prefetch=1) as deliveries:
            held = await next_delivery(deliveries)
            for moment in range(60):  # loop turns from the call to its cancellation
                asking = asyncio.ensure_future(sub.queue_depth(gone))
                for _ in range(moment):
                    await asyncio.sleep(0)  # sleep-ok: one loop turn, to cancel at each moment
                asking.cancel()
                await asyncio.gather(asking, return_exceptions=True)
            await held.ack()
        assert await pub.queue_depth(queue) == 0  # acked on the channel it came on
    finally:
        await pub.delete_queue(queue)


async def test_publishing_to_a_missing_exchange_fails_and_the_transport_recovers(transport_pair):
    pub, _ = transport_pair
    exchange, queue = names()
    with pytest.raises(TransportError):
        await pub.publish(exchange, "key", b"nowhere to go")
    await pub.declare_queue(queue)
    try:
        await pub.publish("", queue, b"still works")
        assert await pub.queue_depth(queue) == 1
    finally:
        await pub.delete_queue(queue)


async def test_a_delivery_can_be_acked_after_its_body_is_released(transport_pair):
    pub, sub = transport_pair
    _, queue = names()
    await pub.declare_queue(queue)
    await pub.publish("", queue, b"x" * 1000)
    try:
        async with sub.consume(queue, prefetch=1) as deliveries:
            delivery = await next_delivery(deliveries)
            delivery.release_body()
            await delivery.ack()
            assert await nothing_more(pub, queue, deliveries)
        assert await sub.queue_depth(queue) == 0
    finally:
        await pub.delete_queue(queue)


async def test_an_exclusive_queue_is_its_connections_alone_and_goes_with_it(transport_pair):
    """A dashboard's queue: whoever publishes to it, only its own connection declares or
    consumes it, and the broker deletes it when that connection closes, however the process
    ends (a delete of its own on the way out could time out, and leave it behind)."""
    pub, sub = transport_pair
    _, queue = names()
    await sub.declare_queue(queue, durable=False, exclusive=True)
    await sub.declare_queue(queue, durable=False, exclusive=True)  # idempotent for its owner
    await pub.publish("", queue, b"for its owner")
    with pytest.raises(Locked):
        await pub.declare_queue(queue, durable=False, exclusive=True)
    with pytest.raises(Locked):
        async with pub.consume(queue, prefetch=1):
            pass
    async with sub.consume(queue, prefetch=1) as deliveries:
        got = await next_delivery(deliveries)
        assert bytes(got.body) == b"for its owner"
        await got.ack()
    await sub.close()
    with pytest.raises(TransportError, match=r"no queue|NOT_FOUND"):
        await pub.queue_depth(queue)
