"""The coordinator's settings: one pydantic model, the single place an option is declared.

Each field's ``description`` is its ``--help`` text; the CLI makes a flag of every field
not marked ``cli=False`` (``--round-timeout`` for ``round_timeout``, or the ``flag`` named
in its extra), and a TOML file (``--config``) may set any field by its name. Adding an
option is one field here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from fedq.coordinator.roster import Roster, load_roster
from fedq.coordinator.strategies import AGGREGATORS, OPTIMIZERS, options_help
from fedq.messages.chunks import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from fedq.messages.schema import FederationName
from fedq.messages.topology import (
    DEFAULT_DEAD_LETTER_BYTES,
    DEFAULT_UPDATES_QUEUE_BYTES,
    UpdatesQueueType,
)

Mode = Literal["sync", "quorum", "async"]
#: Async mode's remedies for stragglers (:mod:`fedq.coordinator.strategies.remedies`).
AsyncRemedy = Literal["none", "delay_adaptive", "cached", "cached_mean"]
#: The remedies that keep each participant's latest update (:mod:`.update_cache`).
CACHING_REMEDIES: frozenset[AsyncRemedy] = frozenset({"cached", "cached_mean"})
LatePolicy = Literal["reject", "fold"]
StrategyOptions = dict[str, float | int | str | bool]

#: What each mode does, for ``--help`` (:data:`fedq.coordinator.modes.MODES` runs them).
MODES_HELP: dict[Mode, str] = {
    "sync": "every participant each round",
    "quorum": "K of N close a round",
    "async": "no rounds, a version every K updates from any base version, stragglers "
    "kept (--async-remedy)",
}
_HOLDING = [name for name, cls in AGGREGATORS.items() if cls.holds_updates]
AGGREGATOR_HELP = (
    f"{', '.join(AGGREGATORS)}, or package.module:attr. {', '.join(_HOLDING)} keep all K "
    "deltas: K x model size, in RAM up to --robust-memory-mb, beyond it in a file; the others "
    "stream (O(model) memory)."
)


#: The staleness cutoff of an async remedy without --max-staleness: none in practice.
NO_STALENESS_CUTOFF = 1 << 62


def cached_can_calibrate(aggregator: str, dp_clip: float | None) -> bool:
    """Whether ``--async-remedy cached`` (or ``cached_mean``) can work with these settings:
    its step is made of the updates' weighted mean, which a robust aggregator or DP
    clipping replaces."""
    return aggregator == "mean" and dp_clip is None


class ConfigError(ValueError):
    """The coordinator cannot run with these settings; the message says which and why."""


def _cli(flag: str | None = None, *, cli: bool = True) -> dict[str, Any]:
    """Field metadata for the CLI: its flag when not ``--field-name`` (a short one, such
    as ``-n``, is added to it), or ``cli=False`` for fields the commands set themselves."""
    return {"cli": cli, **({"flag": flag} if flag else {})}


class CoordinatorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    federation: FederationName = Field(json_schema_extra=_cli(cli=False))
    participants: int = Field(
        ge=1, description="N, the participants of the federation.", json_schema_extra=_cli("-n")
    )
    rounds: int = Field(
        ge=1,
        description="Versions to commit: rounds in sync and quorum mode, buffers in async mode.",
        json_schema_extra=_cli("-r"),
    )
    state_dir: Path = Field(json_schema_extra=_cli(cli=False))

    mode: Mode = Field(
        "quorum",
        description="; ".join(f"{mode}: {what}" for mode, what in MODES_HELP.items()) + ".",
    )
    quorum: int | None = Field(
        None,
        ge=1,
        description="K, the updates that make a version: of N in quorum mode, the buffer in "
        "async mode (sync mode takes N).",
        json_schema_extra={"shown_default": "N"},
    )
    min_quorum: int | None = Field(
        None,
        ge=1,
        description="At the deadline, commit with at least this many.",
        json_schema_extra={"shown_default": "K"},
    )
    round_timeout: float = Field(
        120.0, gt=0, description="Seconds before a round's (or a buffer's) deadline."
    )
    evaluate_every: int = Field(
        1,
        ge=1,
        description="Evaluate the committed model (the app's held-out evaluation) every N "
        "versions, and the last. The evaluation comes between a commit and the next "
        "version's model, so in async mode, where versions come every few updates, "
        "evaluating each one bounds how fast they can come.",
    )
    late_updates: LatePolicy = Field(
        "reject",
        description="Quorum mode, an update for a closed round: reject it as stale, or fold "
        "it into the next version with the staleness weight.",
    )
    sample_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Client sampling (sync and quorum mode): each version draws this fraction "
        "of the live participants (at least K, seeded), and only they train on it; the "
        "quorum applies within the sample.",
    )
    staleness_exponent: float = Field(
        0.5,
        ge=0,
        description="a in s(tau) = (1 + tau)^-a, the factor of an update tau versions behind.",
    )
    max_staleness: int = Field(
        4, ge=0, description="Reject an update more than this many versions behind (stale)."
    )
    async_remedy: AsyncRemedy = Field(
        "none",
        description="Async mode, for stragglers: none (FedBuff: s(tau), refused beyond "
        "--max-staleness); delay_adaptive (FADAS: every update kept with s(tau), the server "
        "step shrunk to 1/tau_max when the stalest is beyond --delay-threshold); cached "
        "(CA2FL: every update kept, each participant's latest cached on disk and the step "
        "calibrated with it, no s(tau)); cached_mean (MIFA: the same cache, each version "
        "the mean of every participant's latest local model). With a remedy, nothing is "
        "refused as stale unless --max-staleness is given.",
        json_schema_extra={
            "shown_default": "none; in async mode cached_mean (delay_adaptive with an "
            "--aggregator other than mean, or with --dp-clip)"
        },
    )
    delay_threshold: int = Field(
        4,
        ge=0,
        description="--async-remedy delay_adaptive: tau_c, the staleness up to which the "
        "server step is not shrunk.",
    )
    async_one_per_version: bool = Field(
        True,
        description="In async mode, one update per participant per version (a second is "
        "already_submitted); off: one per participant and base version, so one participant "
        "may fill a version with updates on several recent models.",
    )

    aggregator: str = Field(
        "mean",
        description=AGGREGATOR_HELP,
    )
    aggregator_options: StrategyOptions = Field(
        default_factory=dict,
        description=f"KEY=VALUE for the aggregator: {options_help(AGGREGATORS)}.",
        json_schema_extra=_cli("--aggregator-option"),
    )
    server_optimizer: str = Field(
        "fedavg",
        description=f"{', '.join(OPTIMIZERS)}, or package.module:attr.",
    )
    server_lr: float = Field(
        1.0, gt=0, description="The server optimizer's learning rate (adaptive ones: try 0.1)."
    )
    optimizer_options: StrategyOptions = Field(
        default_factory=dict,
        description=f"KEY=VALUE for the server optimizer: {options_help(OPTIMIZERS)}.",
        json_schema_extra=_cli("--optimizer-option"),
    )
    robust_memory_mb: float = Field(
        1024.0,
        gt=0,
        description="RAM for the deltas median, trimmed_mean and krum keep; beyond it they "
        "spill to a file in the state dir.",
    )

    dp_clip: float | None = Field(
        None,
        gt=0,
        description="Central differential privacy: clip every update to this L2 norm and add "
        "Gaussian noise to their sum (uniform weights, fixed denominator K).",
    )
    dp_noise_multiplier: float = Field(
        1.0, ge=0, description="With --dp-clip, the noise's standard deviation over the clip."
    )
    dp_delta: float = Field(
        1e-5, gt=0, lt=1, description="With --dp-clip, the delta of the epsilon reported."
    )
    dp_sampling_rate: float = Field(
        1.0,
        gt=0,
        le=1,
        description="With --dp-clip, the rate at which participants are sampled at random "
        "per version, for the accountant; 1 claims no amplification (first K to arrive are "
        "not a random sample).",
    )

    codec: Literal["raw", "fp16"] = Field(
        "raw", description="Tensor codec of the published models (updates: --update-codec)."
    )
    updates_queue: UpdatesQueueType = Field(
        "quorum",
        description="Type of the fedq.F.updates queue: classic, or quorum (replicated in a "
        "cluster).",
    )
    updates_queue_bytes: int = Field(
        DEFAULT_UPDATES_QUEUE_BYTES,
        ge=1 << 20,
        description="Byte limit of the fedq.F.updates queue: past it RabbitMQ refuses new "
        "updates and participants publish them again later (set when the queue is made).",
    )
    dead_letter_bytes: int = Field(
        DEFAULT_DEAD_LETTER_BYTES,
        ge=1 << 10,
        description="Byte limit of the fedq.F.rejected dead-letter queue's bodies (and one "
        "message per 16 KiB of it, at least 64): past it RabbitMQ refuses new copies and keeps "
        "the ones it has; a refusal without its copy is still acked, recorded in the ledger "
        "and counted (fedq_dead_letter_dropped_total). Set when the queue is made.",
    )
    dead_letter_share: float = Field(
        0.25,
        gt=0,
        le=1.0,
        description="With --verify-identity: the largest share of the dead-letter queue's "
        "bytes and messages that one broker user's refused updates may take; past it their "
        "bodies are not copied (recorded and counted), so one participant's flood leaves room "
        "for the evidence of others. 1 turns it off.",
    )
    max_updates_per_participant: int = Field(
        4,
        ge=1,
        description="With --verify-identity: distinct updates one broker user may have "
        "admitted per version; more are refused (rate_limited).",
    )
    max_update_norm: float | None = Field(
        None, gt=0, description="Reject updates whose delta has a larger L2 norm."
    )
    max_weight_share: float = Field(
        0.75,
        ge=0.5,
        le=1.0,
        description="The largest share of a version's total weight one update may have: "
        "the heaviest is folded with at most share/(1-share) times the others' weight "
        "(num_examples is what a sender claims). 1 turns the cap off; the default leaves "
        "honest data sizes up to 3:1 between two updates exact.",
    )
    max_update_bytes: int | None = Field(
        None,
        gt=0,
        description="Reject larger update bodies.",
        json_schema_extra={"shown_default": "the raw model's size plus 1 MiB"},
    )
    chunk_bytes: int = Field(
        DEFAULT_CHUNK_BYTES,
        ge=MIN_CHUNK_BYTES,
        le=MAX_CHUNK_BYTES,
        description="Models larger than this many bytes are published in chunks of at most "
        "this size (RabbitMQ refuses messages over 128 MiB); each model announces it, and "
        "participants send their updates in chunks of the same size.",
    )
    max_streams: int = Field(
        64,
        ge=1,
        description="Chunked updates assembled at once; one more is refused (too_many_streams).",
    )
    max_streams_per_participant: int = Field(
        2,
        ge=1,
        description="Chunked updates of one participant assembled at once; one more is "
        "refused (too_many_streams).",
    )
    chunk_timeout: float = Field(
        120.0,
        gt=0,
        description="Refuse a chunked update as incomplete when no chunk of it came for this "
        "many seconds.",
    )
    consumer_timeout: float = Field(
        1800.0,
        gt=0,
        description="RabbitMQ's consumer_timeout in seconds (30 minutes unless set): held "
        "updates are returned to the queue and taken again after half of it, so a version "
        "may stay open for any time.",
    )
    roster: Path | None = Field(
        None,
        description="A TOML file naming the participants ([participants] id = { examples = N }): "
        "updates and control events under other ids are refused or ignored, and an update "
        "weighs at most the examples its participant declared.",
    )
    from_last_good: bool = Field(
        False,
        description="If the state dir's newest checkpoint is damaged, go on from the newest "
        "version whose checkpoint matches the ledger: the checkpoints after it (and a copy "
        "of the ledger) move to STATE_DIR/damaged-<time>/, and their updates are lost, "
        "recorded as refused (rolled_back).",
    )
    verify_identity: bool = Field(
        False,
        description="Reject updates whose broker user is not the participant they claim "
        "(needs one broker user per participant).",
    )
    linger_seconds: float = Field(
        120.0,
        ge=0,
        description="After the last version, refuse late updates while participants are "
        "alive (not left, heard from within 15 s), at most this many seconds.",
        json_schema_extra=_cli("--linger"),
    )
    liveness_seconds: float = Field(15.0, gt=0, json_schema_extra=_cli(cli=False))

    #: The roster read from ``roster`` (once, when the settings are checked).
    _roster: Roster | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _roster_loads(self) -> CoordinatorConfig:
        if self.roster is not None:
            self._roster = load_roster(self.roster)
            if len(self._roster) < self.participants:
                raise ValueError(
                    f"the roster {self.roster} names {len(self._roster)} participants, "
                    f"fewer than --participants ({self.participants})"
                )
        return self

    @property
    def participant_roster(self) -> Roster | None:
        return self._roster

    @model_validator(mode="before")
    @classmethod
    def _async_remedy_by_default(cls, data: Any) -> Any:
        """Async mode keeps its stragglers unless told otherwise: its default remedy is
        MIFA's step to the mean of every participant's cached latest model, which learned
        best in ``bench/async_vs_sync.py`` (3 seeds each of Dir(0.5) and #C=2, 3 of 10
        participants 5x slower, bench/README "Stragglers"): as soon as CA2FL's calibration
        on Dir(0.5), ahead of it on #C=2, and steadier on both. It steps by the weighted
        mean, so with a robust aggregator or DP clipping the default is FADAS's
        delay-adaptive step instead. Sync and quorum mode take none. The
        choice is made as the settings are read, so ``async_remedy`` always names the
        remedy in use."""
        if not isinstance(data, dict) or data.get("mode") != "async":
            return data
        if data.get("async_remedy") is not None:
            return data
        calibrates = cached_can_calibrate(data.get("aggregator", "mean"), data.get("dp_clip"))
        return {**data, "async_remedy": "cached_mean" if calibrates else "delay_adaptive"}

    @model_validator(mode="after")
    def _quorum_fits(self) -> CoordinatorConfig:
        if not 1 <= self.min_k <= self.k <= self.participants:
            raise ValueError(
                f"need 1 <= --min-quorum ({self.min_k}) <= --quorum ({self.k}) <= "
                f"--participants ({self.participants})"
            )
        if self.mode == "sync" and self.quorum not in (None, self.participants):
            raise ValueError("sync mode takes every participant: drop --quorum or use quorum mode")
        if self.async_remedy != "none":
            if self.mode != "async":
                raise ValueError(f"--async-remedy {self.async_remedy} is for async mode")
            if self.caches_updates and not cached_can_calibrate(self.aggregator, self.dp_clip):
                raise ValueError(
                    f"--async-remedy {self.async_remedy} steps by the weighted mean: drop "
                    "--aggregator and --dp-clip, or use --async-remedy delay_adaptive"
                )
        if self.sample_fraction is not None:
            if self.mode == "async":
                raise ValueError("--sample-fraction is for sync and quorum mode, not async")
            if self.sample_size < self.k:
                raise ValueError(
                    f"--sample-fraction {self.sample_fraction} of {self.participants} draws "
                    f"{self.sample_size}, fewer than --quorum ({self.k}): raise it or lower K"
                )
        return self

    @property
    def sample_size(self) -> int:
        """Participants drawn per version with --sample-fraction: ceil(F x N), at least 1."""
        fraction = 1.0 if self.sample_fraction is None else self.sample_fraction
        return max(1, math.ceil(fraction * self.participants - 1e-9))

    @property
    def k(self) -> int:
        """Updates per version."""
        return self.participants if self.mode == "sync" else self.quorum or self.participants

    @property
    def folds_early(self) -> bool:
        """Whether a version folds chunked updates' chunks as they come
        (:mod:`~.strategies.early_mean`): when it waits for an update from everyone drawn
        (a round mode whose quorum is every sampled participant), so an update in chunks
        rarely spans two versions. With a smaller quorum, or in async mode, stragglers'
        updates would, and each version would fold its updates again at its end."""
        return self.mode != "async" and self.k >= self.sample_size

    def evaluates(self, version: int) -> bool:
        """Whether version ``version`` is evaluated when it is committed."""
        return version % self.evaluate_every == 0 or version >= self.rounds

    @property
    def min_k(self) -> int:
        return self.min_quorum or self.k

    @property
    def caches_updates(self) -> bool:
        """Whether the remedy keeps each participant's latest update on disk."""
        return self.async_remedy in CACHING_REMEDIES

    def staleness_factor(self, tau: int) -> float:
        """s(tau) = (1 + tau)^-a (FedBuff): 1 for a fresh update, smaller the older it is.
        1 with a caching remedy: the cache takes the place of s(tau)."""
        if self.caches_updates:
            return 1.0
        return float((1 + tau) ** -self.staleness_exponent)

    @property
    def staleness_cutoff(self) -> int:
        """The most versions behind an update may be: ``max_staleness``, or with an async
        remedy and no ``--max-staleness`` given, no cutoff (every update is kept)."""
        if self.async_remedy != "none" and "max_staleness" not in self.model_fields_set:
            return NO_STALENESS_CUTOFF
        return self.max_staleness
