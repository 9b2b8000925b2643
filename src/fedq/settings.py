"""Settings shared by every command: flags win, then ``FEDQ_*`` environment variables,
then a ``--config`` file (:mod:`fedq.options`), then a ``fedq.env`` file in the working
directory (read here, for these three alone), then these defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from fedq.messages.amqp import DEFAULT_BROKER_URL


class FedqSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDQ_", env_file="fedq.env", extra="ignore")

    #: RabbitMQ URL for ``coordinator``, ``participant``, ``dashboard``, ``teardown`` and
    #: ``broker check``. ``simulate`` runs on the embedded broker unless given ``--broker``.
    broker_url: str = DEFAULT_BROKER_URL
    state_dir: Path = Path("fedq-state")
    log_level: str = "WARNING"


def settings() -> FedqSettings:
    return FedqSettings()
