"""Hostile updates: hand-written cases, each with the reason the coordinator must give, and
hypothesis strategies for msgpack documents of any shape.

Bodies are built with msgpack directly, not fedq's encoder, so they can be anything a
sender can put on the wire. Every case claims to come from ``mallory`` (the broker user
that publishes it, so that the identity check passes and the case reaches the check it
is aimed at), except the ones made from a captured honest update.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from hypothesis import strategies as st

ATTACKER = "mallory"
#: The coordinator's --max-update-norm in the hostile run; honest synthetic deltas are ~1.
NORM_BOUND = 100.0


@dataclass(frozen=True)
class HostileCase:
    kind: str
    body: bytes
    #: The reason the coordinator must record; "duplicate" is acked and counted, not
    #: dead-lettered (the same bytes as an update it already has).
    reason: str
    #: "attacker", or "owner": published with the captured update's owner's credentials.
    sender: str = "attacker"


def tensor(name: str, array: np.ndarray, **overrides: Any) -> dict[str, Any]:
    entry = {
        "name": name,
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "codec": "raw",
        "data": array.tobytes(),
    }
    return entry | overrides


def _update_doc(
    federation: str,
    model: dict[str, np.ndarray],
    value: float = 0.01,
    attacker: str = ATTACKER,
    **overrides: Any,
) -> dict[str, Any]:
    """A well-formed update from ``attacker`` on model v0, as a msgpack-ready map."""
    doc: dict[str, Any] = {
        "v": 1,
        "kind": "update",
        "federation": federation,
        "update_id": f"hostile-{uuid.uuid4().hex[:12]}",
        "participant": attacker,
        "round": 1,
        "base_version": 0,
        "num_examples": 10,
        "metrics": {},
        "tensors": [tensor(k, np.full_like(v, value)) for k, v in model.items()],
    }
    return doc | overrides


def pack(doc: Any) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def crafted_cases(
    federation: str, model: dict[str, np.ndarray], attacker: str = ATTACKER, version: int = 1
) -> list[HostileCase]:
    """One of each kind, for a sync coordinator collecting updates on model ``version``
    (at least 1, so base v0 is stale) whose model is ``model`` and whose --max-update-norm
    is NORM_BOUND, sent by broker user ``attacker``."""

    def doc(**overrides: Any) -> dict[str, Any]:
        return _update_doc(federation, model, attacker=attacker, **overrides)

    names = list(model)
    first, w = names[0], model[names[0]]

    def with_first(**entry: Any) -> bytes:
        update = doc()
        update["tensors"][0] = tensor(first, np.zeros_like(w)) | entry
        return pack(update)

    def valid(**overrides: Any) -> bytes:
        return pack(doc(**overrides))

    bomb = tensor(first, w, shape=[1 << 33], codec="topk", data=struct.pack("<I", 0))
    current = {"round": version + 1, "base_version": version}  # admitted by the mode
    nan = np.zeros_like(w)
    nan[0] = np.nan
    inf = np.zeros_like(w)
    inf[-1] = np.inf
    huge_metrics = {f"m{i}": 0.0 for i in range(120_000)}  # ~1.9 MB of metadata
    return [
        HostileCase("not msgpack", b"\xc1\xc1 GET / HTTP/1.1\r\n", "undecodable"),
        HostileCase("truncated body", valid(**current)[:5000], "undecodable"),
        HostileCase("msgpack, not a map", pack([1, 2, 3]), "undecodable"),
        HostileCase(
            "ext type", pack({"federation": msgpack.ExtType(42, b"\x80\x04")}), "undecodable"
        ),
        HostileCase("wrong field type", valid(num_examples="ten", **current), "schema"),
        HostileCase(
            "missing field",
            pack({k: v for k, v in doc().items() if k != "participant"}),
            "schema",
        ),
        HostileCase("negative dimension", with_first(shape=[-4]), "schema"),
        HostileCase("absurd dimension", with_first(shape=[1 << 40, 1 << 40]), "shape_mismatch"),
        HostileCase(
            "topk memory bomb (32 GiB declared)",
            pack(doc() | {"tensors": [bomb]}),
            "shape_mismatch",
        ),
        HostileCase("shape larger than data", with_first(data=b"\x00" * 8), "undecodable"),
        HostileCase("object dtype", with_first(dtype="object"), "schema"),
        HostileCase(
            "wrong dtype",
            with_first(dtype="float64", data=np.zeros_like(w, np.float64).tobytes()),
            "dtype_mismatch",
        ),
        HostileCase(
            "unknown tensor",
            pack(doc(**current) | {"tensors": [tensor("evil", w)]}),
            "tensor_mismatch",
        ),
        HostileCase("NaN", _replace_first(doc(**current), model, nan), "non_finite"),
        HostileCase("infinity", _replace_first(doc(**current), model, inf), "non_finite"),
        HostileCase(
            "norm outlier", norm_outlier(federation, model, attacker, version), "norm_exceeded"
        ),
        HostileCase(
            "unknown federation",
            pack(doc(**current) | {"federation": "elsewhere"}),
            "wrong_federation",
        ),
        HostileCase("stale base version", valid(round=1, base_version=0), "stale"),
        HostileCase("future base version", valid(round=1001, base_version=1000), "unknown_round"),
        HostileCase("oversized body", valid(metrics=huge_metrics, **current), "too_large"),
        HostileCase(
            "nested empty containers (64x on decode)",
            pack(doc(**current) | {"padding": [[] for _ in range(200_000)]}),
            "undecodable",
        ),
    ]


def norm_outlier(
    federation: str, model: dict[str, np.ndarray], attacker: str, version: int
) -> bytes:
    """A well-formed update on model ``version``, a new id each call, far above NORM_BOUND."""
    return pack(
        _update_doc(federation, model, 10.0, attacker, round=version + 1, base_version=version)
    )


def _replace_first(doc: dict[str, Any], model: dict[str, np.ndarray], values: np.ndarray) -> bytes:
    doc["tensors"][0] = tensor(next(iter(model)), values)
    return pack(doc)


def captured_cases(captured: bytes) -> list[HostileCase]:
    """From an honest update the attacker saw: replayed by its owner's credentials (the same
    bytes: a duplicate, counted once), altered under the same id, and sent by the attacker."""
    altered = bytearray(captured)
    altered[-4:] = struct.pack("<f", 0.5)  # the last value of the last tensor
    return [
        HostileCase("replayed update", captured, "duplicate", sender="owner"),
        HostileCase(
            "other bytes under a committed id", bytes(altered), "conflicting_duplicate", "owner"
        ),
        HostileCase("claimed identity", captured, "forged"),
    ]


#: Any msgpack value fedq's decoder might be handed.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)


def hostile_documents(
    federation: str, model: dict[str, np.ndarray], attacker: str = ATTACKER
) -> st.SearchStrategy[bytes]:
    """Arbitrary msgpack documents, and updates with one field (or one tensor field) set to
    an arbitrary value. None is valid: the tensors hold NaN, so even an update whose every
    field survived is refused (``non_finite``)."""
    poisoned = np.zeros_like(next(iter(model.values())))
    poisoned[0] = np.nan

    def base() -> dict[str, Any]:
        doc = _update_doc(federation, model, attacker=attacker, round=2, base_version=1)
        doc["tensors"][0] = tensor(next(iter(model)), poisoned)
        return doc

    fields = st.sampled_from(sorted(base()))
    tensor_fields = st.sampled_from(["name", "dtype", "shape", "codec", "data", "slice", "pad"])

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        doc = base()
        if draw(st.booleans()):
            doc[draw(fields)] = draw(msgpack_values)
        else:
            doc["tensors"][0][draw(tensor_fields)] = draw(msgpack_values)
        return pack(doc)

    return st.one_of(msgpack_values.map(pack), mutated(), st.binary(max_size=256))
