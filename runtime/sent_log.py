"""A participant's own record of the updates the broker confirmed: one JSON line each.

``fedq participant --sent-log FILE`` appends a line once every message of an update got its
publisher confirm; ``fedq audit --sent-log FILE`` then checks the coordinator's ledger
against it: each update the broker took responsibility for must be in exactly one committed
version or refused with a reason, never lost and never applied twice. That is the promise
the fault tests check after every crash, and one an operator can check on a real run.

The participant creates the file when it starts, so an empty log says "started, nothing
confirmed" and a missing one "never ran here". A line is written after the confirm, never
before: a participant killed in between has a
confirmed update missing from its log (audited as nothing), never a logged update that the
broker does not have. Lines are appended with one ``write`` on a file opened in append mode,
so virtual participants sharing a file do not interleave; a line cut short by a crash is
skipped when read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class SentUpdate:
    federation: str
    update_id: str
    participant: str
    base_version: int
    #: Bytes on the wire, every chunk together.
    bytes: int


def append_sent(path: Path, sent: SentUpdate) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(asdict(sent)) + "\n")


def read_sent(path: Path) -> list[SentUpdate]:
    """Every whole line of ``path``; a line cut short by a crash is left out."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            found.append(SentUpdate(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return found
