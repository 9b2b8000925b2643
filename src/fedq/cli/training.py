"""How participants train, as ``simulate`` and ``participant`` take it from their flags:
the update codec, the partition scheme and the local training settings over the app's."""

from __future__ import annotations

import os
from typing import Any

from fedq.cli.running import fail
from fedq.messages.codecs import CODECS, CodecError, get_codec
from fedq.participant.app import App, AppError, TrainConfig
from fedq.participant.partitions import ENV_VAR as PARTITION_ENV
from fedq.participant.partitions import Scheme


def check_codec(codec: str) -> str:
    try:
        get_codec(codec)
    except CodecError:
        raise fail(
            f"unknown codec {codec!r}: choose one of {', '.join(CODECS)} or topk:FRACTION"
        ) from None
    return codec


def train_config(application: App, **flags: Any) -> TrainConfig:
    """How participants train: the app's ``train_config`` with the flags given on top."""
    base = getattr(application, "train_config", None) or TrainConfig()
    try:
        return base.with_overrides(**flags)
    except AppError as exc:
        raise fail(str(exc)) from None


def use_scheme(scheme: str) -> None:
    """Check ``scheme`` and hand it to the apps (they read FEDQ_PARTITION when loading)."""
    try:
        Scheme.parse(scheme)
    except ValueError as exc:
        raise fail(f"--partition-scheme: {exc}") from None
    os.environ[PARTITION_ENV] = scheme
