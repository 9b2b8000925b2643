"""Flags several commands share, declared once: ``--app``, ``--broker``, ``--state-dir``,
``--report``, ``--verbose``, ``--management-url``, the update codec, the partition scheme
and the local training flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

AppOpt = Annotated[str, typer.Option("--app", help="The app, package.module:attr.")]
BrokerOpt = Annotated[
    str | None,
    typer.Option("--broker", help="RabbitMQ URL (env FEDQ_BROKER_URL).", show_default=False),
]
FederationOpt = Annotated[str, typer.Option("--federation", help="Federation name.")]
StateOpt = Annotated[
    Path | None, typer.Option("--state-dir", help="Checkpoints and ledger (env FEDQ_STATE_DIR).")
]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write a JSON report here.")]
CODEC_HELP = (
    "Tensor codec of the updates sent: raw, fp16, int8 (~4x smaller), topk (1% of the "
    "entries, ~50x smaller) or topk:FRACTION; lossy codecs carry error feedback across rounds."
)
CodecOpt = Annotated[str, typer.Option("--codec", help=CODEC_HELP)]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")]
ManagementOpt = Annotated[
    str | None,
    typer.Option(
        "--management-url",
        help="RabbitMQ's management API, which lists the queues (default: the broker's host, "
        "port 15672, the broker's login).",
        show_default=False,
    ),
]
SchemeOpt = Annotated[
    str,
    typer.Option(
        "--partition-scheme",
        help="How the shipped apps split the data: iid, dirichlet:BETA (label skew), "
        "labels:K (K labels each), quantity:BETA (size skew) or noise:SIGMA (feature noise).",
    ),
]


EpochsOpt = Annotated[
    int | None, typer.Option("--epochs", min=1, help="Local epochs per round (default: the app's).")
]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", min=1, help="Local batch size (default: the app's).")
]
LearningRateOpt = Annotated[
    float | None,
    typer.Option(
        "--learning-rate", help="The local optimizer's learning rate (default: the app's)."
    ),
]
MomentumOpt = Annotated[
    float | None,
    typer.Option("--momentum", help="The local optimizer's momentum, SGD or RMSprop only."),
]
KeepOptimizerOpt = Annotated[
    bool | None,
    typer.Option(
        "--keep-optimizer/--fresh-optimizer",
        help="Keep the local optimizer's state (momentum, moments) across rounds, or start "
        "each round with a fresh one (the default, as in NIID-Bench).",
        show_default=False,
    ),
]
ProximalMuOpt = Annotated[
    float | None,
    typer.Option("--proximal-mu", help="FedProx: pull local training toward the global model."),
]
