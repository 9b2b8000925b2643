"""The CPU a consumer spends to take large messages from RabbitMQ: aio-pika as it ships
against fedq's connection, on the same bytes, taking turns in one run.

    python bench/consume.py [--messages 100] [--megabytes 4] [--turns 4]

Each turn runs every variant in a fresh process (glibc's malloc thresholds tuned as fedq's
processes tune them, for all): it fills a queue with ``--messages`` messages of
``--megabytes`` MiB, then consumes them (prefetch 8, each acked) and reports its CPU
seconds (user + system, from its rusage) from the first delivery asked for to the last
acked, per message. Variants:

- ``aio-pika``: ``aio_pika.connect`` as it ships (asyncio's stream reader, aiormq's
  frames and body assembly);
- ``stream-reader``: fedq's connection, its frames read from asyncio's stream reader with
  fedq's body frames (``messages/body_frames.py``), as fedq read them before
  ``messages/frame_stream.py``;
- ``fedq``: fedq's connection as it is (``messages/frame_stream.py``).

Prints each turn, the median per variant and its ratio to aio-pika's, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid

from fedq import strict_json
from fedq.runtime.tuning import tune_process

BROKER = os.environ.get("FEDQ_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
VARIANTS = ("aio-pika", "stream-reader", "fedq")


async def _connect(variant: str) -> object:
    import aio_pika

    if variant == "aio-pika":
        return await aio_pika.connect(BROKER)
    from fedq.messages import amqp, read_pause  # noqa: F401 (installs fedq's body frames)
    from fedq.messages.channel_closing import RobustConnection

    if variant == "stream-reader":

        async def stream_reader(host: str, port: int, **kwargs: object) -> object:
            return await asyncio.open_connection(host, port, **kwargs)  # type: ignore[arg-type]

        read_pause.open_frame_stream = stream_reader  # type: ignore[attr-defined,assignment]
    return await aio_pika.connect_robust(BROKER, connection_class=RobustConnection)


async def _one(variant: str, messages: int, size: int) -> dict[str, float]:
    import aio_pika

    queue_name = f"fedq-bench-consume-{uuid.uuid4().hex[:8]}"
    filler = await aio_pika.connect(BROKER)
    channel = await filler.channel(publisher_confirms=True)
    await channel.declare_queue(queue_name, auto_delete=False)
    body = os.urandom(size)
    for _ in range(messages):
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue_name)
    await filler.close()

    connection = await _connect(variant)
    consumer = await connection.channel()  # type: ignore[attr-defined]
    await consumer.set_qos(prefetch_count=8)
    queue = await consumer.get_queue(queue_name)
    taken = 0
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    async with queue.iterator() as deliveries:
        async for message in deliveries:
            assert len(message.body) == size
            await message.ack()
            taken += 1
            if taken == messages:
                break
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    await queue.delete(if_unused=False, if_empty=False)
    await connection.close()  # type: ignore[attr-defined]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_ms": 1e3 * cpu / messages, "wall_ms": 1e3 * wall / messages}


def _child(variant: str, messages: int, size: int) -> None:
    tune_process()
    print(json.dumps(asyncio.run(_one(variant, messages, size))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--megabytes", type=float, default=4, help="MiB per message")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = int(args.megabytes * 2**20)
    if args.child:
        _child(args.child, args.messages, size)
        return
    runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for turn in range(args.turns):
        for variant in VARIANTS if turn % 2 == 0 else VARIANTS[::-1]:
            sizes = ["--messages", str(args.messages), "--megabytes", str(args.megabytes)]
            out = subprocess.run(
                [sys.executable, __file__, "--child", variant, *sizes],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            figures = json.loads(out.splitlines()[-1])
            runs[variant].append(figures["cpu_ms"])
            print(f"turn {turn + 1}: {variant:13s} {figures['cpu_ms']:6.2f} ms CPU a message")
    medians = {v: statistics.median(ms) for v, ms in runs.items()}
    print(f"\n{args.messages} messages of {args.megabytes:g} MiB, median of {args.turns} turns:")
    for variant, ms in medians.items():
        ratio = ms / medians["aio-pika"]
        print(f"  {variant:13s} {ms:6.2f} ms CPU a message, {ratio:.2f}x aio-pika")
    print(
        strict_json.dumps(
            {
                "bench": "consume",
                "messages": args.messages,
                "megabytes": args.megabytes,
                "turns": args.turns,
                "cpu_ms_per_message": runs,
                "median_cpu_ms": medians,
                "ratio_to_aio_pika": {v: m / medians["aio-pika"] for v, m in medians.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
