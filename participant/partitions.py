"""How a dataset is split across participants: IID or one of NIID-Bench's non-IID schemes.

Li et al., "Federated Learning on Non-IID Data Silos: An Experimental Study" (ICDE 2022)
define the schemes; a :class:`Scheme` is parsed from one of these specs:

=================  ==============================================================
``iid``            a seeded shuffle cut into equal slices
``dirichlet:B``    label skew: per label, shares p ~ Dir(B) over participants
                   (redrawn until every participant holds ``min_size`` samples)
``labels:K``       #C=K: participant i holds label i mod C and K - 1 other
                   distinct labels drawn at random; a label's samples are split
                   evenly among the participants holding it
``quantity:B``     quantity skew: sizes ~ Dir(B) over shuffled samples
                   (redrawn until every participant holds ``min_size`` samples)
``noise:S``        IID, plus Gaussian noise on x with std S * index / count
=================  ==============================================================

Every participant computes the same split from the same seed and takes its own part, so
nothing is exchanged: :func:`split` depends only on (labels, count, scheme, seed), never on
who asks. The parts are disjoint and cover every sample once, with one exception:
under ``labels:K`` a label no participant drew (possible only when ``count < classes``)
has its samples left out of every part.

The scheme reaches an app in the participant's :class:`~fedq.participant.app.Partition`
(``fedq simulate`` and ``fedq participant`` take it from ``--partition-scheme``; the shipped
apps pass it to :func:`apply` through :func:`fedq.apps.keras_app.shard`). Pure numpy: no
broker, no files.
"""

from __future__ import annotations

import numpy as np

from fedq.participant.app import Partition
from fedq.participant.scheme import Scheme

Arrays = tuple[np.ndarray, np.ndarray]

#: NIID-Bench's minimum part size for the Dirichlet schemes.
MIN_SIZE = 10
#: Dirichlet draws tried before giving up on ``min_size`` (NIID-Bench loops forever).
MAX_DRAWS = 1000


def _classes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct labels, each sample's position among them); labels may be (n, 1)."""
    flat = np.asarray(labels).reshape(len(labels), -1)
    if flat.shape[1] != 1:
        raise ValueError("labels must hold one label per sample (shape (n,) or (n, 1))")
    values, codes = np.unique(flat[:, 0], return_inverse=True)
    return values, codes.reshape(-1)


def _iid(n: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), count)


def _dirichlet_labels(
    codes: np.ndarray,
    classes: int,
    count: int,
    beta: float,
    min_size: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    n = len(codes)
    for _ in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(count)]
        sizes = np.zeros(count, dtype=np.int64)
        for label in range(classes):
            members = rng.permutation(np.flatnonzero(codes == label))
            shares = rng.dirichlet(np.full(count, beta))
            # NIID-Bench: a participant already above the mean size takes no more.
            open_ = sizes < n / count
            shares = np.where(open_, shares, 0.0)
            total = shares.sum()
            shares = shares / total if np.isfinite(total) and total > 0 else open_ / open_.sum()
            cuts = (np.cumsum(shares) * len(members)).astype(int)[:-1]
            for i, piece in enumerate(np.split(members, cuts)):
                parts[i].append(piece)
                sizes[i] += len(piece)
        if sizes.min() >= min_size:
            return [rng.permutation(np.concatenate(p)) for p in parts]
    raise ValueError(
        f"dirichlet:{beta}: no draw in {MAX_DRAWS} gave each of {count} participants "
        f"{min_size} samples; raise BETA, lower min_size or use fewer participants"
    )


def _label_owners(classes: int, count: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """NIID-Bench's #C=k rule (its ``noniid-#label`` partition): participant i holds label
    ``i mod classes`` and k - 1 other distinct labels drawn uniformly at random, so the
    label groups overlap (not disjoint blocks) and every label has a holder once
    ``count >= classes``. (NIID-Bench draws the others by rejection with
    ``random.randint``; a uniform draw without replacement from the other labels gives
    the same distribution.)"""
    if k > classes:
        raise ValueError(f"labels:{k}: the data has only {classes} labels; need K <= {classes}")
    owners = []
    for i in range(count):
        own = i % classes
        others = rng.choice(np.delete(np.arange(classes), own), k - 1, replace=False)
        owners.append(np.concatenate([[own], others]).astype(np.int64))
    return owners


def _label_count(
    codes: np.ndarray, classes: int, count: int, k: int, rng: np.random.Generator
) -> list[np.ndarray]:
    owners = _label_owners(classes, count, k, rng)
    parts: list[list[np.ndarray]] = [[] for _ in range(count)]
    for label in range(classes):
        holders = [i for i, held in enumerate(owners) if label in held]
        members = rng.permutation(np.flatnonzero(codes == label))
        if not holders:
            continue  # count*k < classes: nobody holds this label; its samples are left out
        for i, piece in zip(holders, np.array_split(members, len(holders)), strict=True):
            parts[i].append(piece)
    return [rng.permutation(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def _quantity(
    n: int, count: int, beta: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    order = rng.permutation(n)
    for _ in range(MAX_DRAWS):
        shares = rng.dirichlet(np.full(count, beta))
        if np.isfinite(shares).all() and (shares * n).min() >= min_size:
            cuts = (np.cumsum(shares / shares.sum()) * n).astype(int)[:-1]
            return np.split(order, cuts)
    raise ValueError(
        f"quantity:{beta}: no draw in {MAX_DRAWS} gave each of {count} participants "
        f"{min_size} samples; raise BETA, lower min_size or use fewer participants"
    )


def split(
    labels: np.ndarray, count: int, scheme: Scheme, seed: int, min_size: int = MIN_SIZE
) -> list[np.ndarray]:
    """Sample indices of each of ``count`` participants, a pure function of the arguments.

    Parts are disjoint and together cover every sample once (``labels:K`` leaves out the
    samples of a label no participant drew, possible only with ``count < classes``).
    ``min_size`` applies to ``dirichlet`` and ``quantity`` only; ValueError when it cannot
    be met.
    """
    if count < 1:
        raise ValueError(f"need at least one participant, not {count}")
    n = len(labels)
    if scheme.kind in ("dirichlet", "quantity") and count * min_size > n:
        raise ValueError(f"{scheme}: {n} samples cannot give {count} participants {min_size} each")
    rng = np.random.default_rng(seed)
    if scheme.kind in ("iid", "noise"):
        return _iid(n, count, rng)  # the first draw of the seed, as the IID shard always was
    assert scheme.value is not None
    if scheme.kind == "quantity":
        return _quantity(n, count, scheme.value, min_size, rng)
    values, codes = _classes(labels)
    if scheme.kind == "dirichlet":
        return _dirichlet_labels(codes, len(values), count, scheme.value, min_size, rng)
    return _label_count(codes, len(values), count, int(scheme.value), rng)


def noise_std(scheme: Scheme, partition: Partition) -> float:
    """NIID-Bench's feature skew: participant 0 gets clean data, noise grows with the index."""
    if scheme.kind != "noise" or scheme.value is None:
        return 0.0
    return scheme.value * partition.index / partition.count


def apply(
    arrays: Arrays, partition: Partition, scheme: Scheme, seed: int, min_size: int = MIN_SIZE
) -> Arrays:
    """Participant ``partition.index``'s (x, y) under ``scheme`` (noisy x for ``noise``)."""
    x, y = arrays
    part = split(y, partition.count, scheme, seed, min_size)[partition.index]
    x, y = x[part], y[part]
    std = noise_std(scheme, partition)
    if std > 0:
        rng = np.random.default_rng([seed, partition.index])
        x = x.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)
        x = x + rng.normal(0.0, std, size=x.shape).astype(x.dtype)
    return x, y
