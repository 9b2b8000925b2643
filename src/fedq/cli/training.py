"""How participants train, as ``simulate`` and ``participant`` take it: the app's own
``train_config`` with what the training flags, ``FEDQ_*`` variables or ``--config`` say
on top (:class:`~fedq.participant.app.TrainConfig` declares them once, for both)."""

from __future__ import annotations

from fedq.cli.running import fail
from fedq.options import Given
from fedq.participant.app import App, AppError, TrainConfig, app_train_config


def train_config(given: Given, application: App) -> TrainConfig:
    try:
        return given.build(TrainConfig, defaults=app_train_config(application).model_dump())
    except AppError as exc:
        raise fail(str(exc)) from None
