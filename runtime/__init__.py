"""What a fedq process needs at run time on either side, apart from the wire: failpoints
for the fault tests, glibc malloc tuning for large buffers, the participant's sent log,
text a sender wrote made safe to print.

It imports nothing else of fedq, so the coordinator, the participant and the CLI may all
use it, and the wire (:mod:`fedq.messages`) stays only the wire.
"""
