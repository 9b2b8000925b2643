"""``fedq.apps.torch_fmnist:app``: NIID-Bench's simple CNN in PyTorch on Fashion-MNIST.

The model of NIID-Bench's MNIST-like experiments (Li et al., ICDE 2022, its
``SimpleCNNMNIST``), as ``fedq.apps.fmnist:niid_cnn`` builds it in Keras: conv 6@5x5,
max-pool, conv 16@5x5, max-pool, FC 120, FC 84, FC 10 with ReLU, 44,426 parameters; SGD
(lr 0.01, momentum 0.9), 10 local epochs of batches of 64 per round, as NIID-Bench's
scripts run it.

The data is :mod:`fedq.apps.fmnist`'s, read the same way (Debian's
``dataset-fashion-mnist`` IDX files, ``FEDQ_FMNIST_DIR`` overrides the folder) and split
the same way (``--partition-scheme``), channels first as PyTorch wants them.
:func:`make_app` makes the same app on the first rows only, for quick runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedq.apps import fmnist
from fedq.apps.torch_app import Arrays, TorchApp
from fedq.participant.app import Partition, TrainConfig


class SimpleCNN(nn.Module):
    """NIID-Bench's ``SimpleCNNMNIST``: 'valid' convolutions take 28x28 to 24x24, pooled to
    12x12, then 8x8, pooled to 4x4: the 16 * 4 * 4 = 256 features of its first FC layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        logits: torch.Tensor = self.fc3(x)  # cross_entropy applies the softmax
        return logits


def channels_first(arrays: Arrays, rows: int | None) -> Arrays:
    """fmnist's (N, 28, 28, 1) float32 images and int64 labels as (N, 1, 28, 28), the
    first ``rows`` only if given."""
    x, y = arrays
    if rows is not None:
        x, y = x[:rows], y[:rows]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), np.ascontiguousarray(y)


def make_app(
    train_rows: int | None = None,
    test_rows: int | None = None,
    train_config: TrainConfig | None = None,
    device: str = "cpu",
    threads: int | None = 1,
) -> TorchApp:
    """The app; ``train_rows`` keeps the first rows of each participant's share and
    ``test_rows`` those of the held-out set (None: all of them). One torch thread by
    default: a simulation trains its participants at once, each in a thread of its own,
    and torch's one thread per core each would oversubscribe the cores."""

    def load_partition(partition: Partition) -> Arrays:
        return channels_first(fmnist.load_partition(partition), train_rows)

    def load_test() -> Arrays:
        return channels_first(fmnist.load_test(), test_rows)

    return TorchApp(
        SimpleCNN,
        load_partition,
        load_test,
        device=device,
        seed=fmnist.SEED,
        train_config=train_config
        or TrainConfig(epochs=fmnist.NIID_EPOCHS, batch_size=64, learning_rate=0.01, momentum=0.9),
        check=fmnist.check_files,
        threads=threads,
    )


#: Every training sample before the split, as fedq.apps.fmnist's (``fedq partition`` reads
#: its labels): the two apps split the same data the same way.
load_train = fmnist.load_train

app = make_app()
