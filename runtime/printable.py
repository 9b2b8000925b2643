"""Text from a sender, made safe to print: what a participant names (an update id, a key
of its metadata, a broker message id) ends up in log lines, the ledger, ``fedq history``
and the dashboard, and a terminal obeys what it is given: ``\\x1b[2J`` clears the screen,
``\\r`` and ``\\n`` forge log lines, a bidi override reorders what the operator reads.

:func:`printable` escapes every character that is not printable, as ``repr`` would
(``\\x1b``, ``\\n``, ``\\u202e``), and bounds the length, so the result is one line of
visible characters. Markup (rich's ``[bold]``, HTML) is the printer's to escape: the same
text is plain in a log file and markup in a rich console.
"""

from __future__ import annotations

#: Characters of a detail or an id kept by default; a sender may make them as long as a
#: message, and whoever reads one needs its start.
MAX_CHARS = 500


def printable(text: object, limit: int | None = MAX_CHARS) -> str:
    """``text`` (``str()`` of anything) with every non-printable character escaped and at
    most ``limit`` characters of it kept (all of it with None), a cut one ending in ``...``."""
    s = text if isinstance(text, str) else str(text)
    if limit is None:
        limit = len(s) * 10  # an escape is at most 10 characters: nothing is cut
    cut = len(s) > limit
    s = s[:limit]
    if not s.isprintable():  # an escape is up to 10 characters: cut again
        s = "".join(c if c.isprintable() else _escape(c) for c in s)
        cut = cut or len(s) > limit
        s = s[:limit]
    return s + "..." if cut else s


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(c: str) -> str:
    if c in _SHORT:
        return _SHORT[c]
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
