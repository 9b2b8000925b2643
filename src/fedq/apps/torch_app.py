"""PyTorch apps: a ``torch.nn.Module`` builder and data loaders, turned into a fedq App.

A user's app is a few lines::

    app = TorchApp(build_model=make_cnn, load_partition=my_shard, load_test=my_test)

and, for anything but classification with cross-entropy, a ``train`` and an ``evaluate``
callback of their own (:data:`TrainFn`, :data:`EvaluateFn`).

What must stay true:

- the federated weights are the module's ``state_dict`` entries of a floating dtype
  (parameters and float buffers such as batch-norm statistics), in ``state_dict`` order,
  named by their ``state_dict`` keys, as float32 numpy arrays (:func:`weights_of`). Other
  entries (``num_batches_tracked``) stay local. Loading takes exactly those names back
  (:func:`load_weights`), or is an AppError naming what differs;
- version 0 is the same in every process: the model is built under ``torch.manual_seed``
  (``seed``), on a forked generator, so the caller's random state is left alone;
- each partition trains its own module instance, built once and reused: worker threads
  never share a module (the coordinator's evaluation has one of its own);
- the device is the user's (``device="cuda:0"``); fedq's arrays are always on the CPU, and
  data batches are moved to the device as they are used.

Importing this module imports torch; ``import fedq`` and the Keras apps never do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedq.apps.framework_app import Arrays as Arrays  # re-exported: apps name their data with it
from fedq.apps.framework_app import FrameworkApp
from fedq.apps.torch_export import write_onnx
from fedq.messages.codec import Weights
from fedq.participant.app import AppError, Partition, TrainConfig, TrainResult

#: ``train(model, (x, y), config, device) -> metrics``: train ``model`` in place, on the
#: partition's arrays, as ``config`` says (epochs, batch size, learning rate, ...).
TrainFn = Callable[[nn.Module, Arrays, TrainConfig, torch.device], dict[str, float]]
#: ``evaluate(model, (x, y), device) -> metrics`` on held-out arrays: ``loss``, ``accuracy``.
EvaluateFn = Callable[[nn.Module, Arrays, torch.device], dict[str, float]]


def weights_of(model: nn.Module) -> Weights:
    """The module's floating state, by ``state_dict`` key, as float32 arrays on the CPU."""
    return {
        name: value.detach().to("cpu", torch.float32).numpy().copy()
        for name, value in model.state_dict().items()
        if value.is_floating_point()
    }


def load_weights(model: nn.Module, weights: Weights) -> None:
    """Copy ``weights`` (named as :func:`weights_of` names them) into ``model``: every
    floating entry of its state, nothing else, each of its own shape."""
    state = model.state_dict()
    expected = [name for name, value in state.items() if value.is_floating_point()]
    if list(weights) != expected:
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        raise AppError(
            f"weights do not fit the module: missing {missing[:3]}, unexpected {extra[:3]}"
            + ("" if missing or extra else " (names in another order)")
        )
    with torch.no_grad():
        for name in expected:
            target = state[name]
            source = torch.from_numpy(np.asarray(weights[name], dtype=np.float32))
            if tuple(source.shape) != tuple(target.shape):
                raise AppError(f"{name}: shape {tuple(source.shape)}, the module's is "
                               f"{tuple(target.shape)}")  # fmt: skip
            target.copy_(source)


def batches(arrays: Arrays, size: int, generator: torch.Generator | None) -> Any:
    """Mini-batches of ``arrays`` as tensors on the CPU, shuffled if given a generator."""
    x, y = torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1])
    order = torch.randperm(len(x), generator=generator) if generator else torch.arange(len(x))
    for start in range(0, len(x), size):
        index = order[start : start + size]
        yield x[index], y[index]


def classification_training(learning_rate: float = 0.01, momentum: float = 0.0) -> TrainFn:
    """The default training: SGD on cross-entropy (``config``'s learning rate and
    momentum, else these), a fresh optimizer each round, FedProx's term when
    ``config.proximal_mu`` is set. Its metrics are the last epoch's mean loss and accuracy."""

    def train(
        model: nn.Module, data: Arrays, config: TrainConfig, device: torch.device
    ) -> dict[str, float]:
        lr = config.learning_rate or learning_rate
        m = momentum if config.momentum is None else config.momentum
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=m)
        anchor = [p.detach().clone() for p in model.parameters()]
        generator = torch.Generator().manual_seed(len(data[0]))
        model.train()
        for _ in range(config.epochs):
            seen, loss_sum, correct = 0, 0.0, 0
            for xb, yb in batches(data, config.batch_size, generator):
                xb, yb = xb.to(device), yb.to(device)
                optimizer.zero_grad()
                out = model(xb)
                loss = nn.functional.cross_entropy(out, yb)
                total = loss + proximal_term(model, anchor, config.proximal_mu)
                total.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                seen += len(yb)
                loss_sum += float(loss.detach()) * len(yb)
                correct += int((out.argmax(1) == yb).sum())
        return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}

    return train


def proximal_term(model: nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx: mu/2 * ||w - w_global||^2 over the trainable parameters (0 when mu is 0)."""
    total = torch.zeros((), device=anchor[0].device if anchor else None)
    if mu == 0:
        return total
    for p, a in zip(model.parameters(), anchor, strict=True):
        total = total + ((p - a) ** 2).sum()
    return total * (mu / 2)


@torch.no_grad()
def classification_evaluation(
    model: nn.Module, data: Arrays, device: torch.device
) -> dict[str, float]:
    """Mean cross-entropy and accuracy over ``data``, in batches of 1,000."""
    model.eval()
    seen, loss_sum, correct = 0, 0.0, 0
    for xb, yb in batches(data, 1000, None):
        xb, yb = xb.to(device), yb.to(device)
        out = model(xb)
        loss_sum += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
        seen += len(yb)
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}


class TorchApp(FrameworkApp[nn.Module]):
    """A fedq App of a ``torch.nn.Module`` builder and two data loaders of numpy arrays:
    ``load_partition(partition) -> (x, y)`` and ``load_test() -> (x, y)`` (or None: no
    held-out evaluation). ``train`` and ``evaluate`` default to classification with
    cross-entropy; ``device`` is where the module runs. ``threads`` sets torch's intra-op
    threads (process-wide; None: torch's default, one per core): a process that trains
    several participants at once (``fedq simulate``, ``--count``) wants 1, as each
    participant's training already runs in a thread of its own. ``example_input``, a batch
    of two or more inputs, is what ONNX export traces the module on (default: the first
    two held-out examples, else the first two of the whole training data)."""

    def __init__(
        self,
        build_model: Callable[[], nn.Module],
        load_partition: Callable[[Partition], Arrays],
        load_test: Callable[[], Arrays] | None = None,
        *,
        train: TrainFn | None = None,
        evaluate: EvaluateFn | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        train_config: TrainConfig | None = None,
        check: Callable[[], None] | None = None,
        threads: int | None = None,
        example_input: np.ndarray | None = None,
    ) -> None:
        super().__init__(load_partition, load_test, check)
        self._build = build_model
        self._example = example_input
        self._train = train or classification_training()
        self._evaluate = evaluate or classification_evaluation
        self.device = torch.device(device)
        self._seed = seed
        #: How participants train unless flags say otherwise (fedq reads this attribute).
        self.train_config = train_config or TrainConfig()
        #: torch's intra-op threads (process-wide), set when the first module is built.
        self._threads = threads

    def _new_model(self) -> nn.Module:
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)  # the same version 0 in every process
            model = self._build()
        return model.to(self.device)

    def initial_weights(self) -> Weights:
        return weights_of(self._model("initial"))

    def train(self, weights: Weights, partition: Partition, config: TrainConfig) -> TrainResult:
        model = self._model(("train", partition))
        data = self._partition_data(partition)
        load_weights(model, weights)
        metrics = self._train(model, data, config, self.device)
        return TrainResult(weights_of(model), num_examples=len(data[0]), metrics=metrics)

    #: The formats :meth:`export` writes (``fedq export --format``).
    export_formats: tuple[str, ...] = ("onnx",)

    def model_of(self, weights: Weights) -> nn.Module:
        """A module of this app holding ``weights``, on the app's device, built anew and the
        caller's own: the federation's model to predict with, inspect or save outside fedq."""
        model = self._build().to(self.device)
        load_weights(model, weights)
        return model

    def export(self, weights: Weights, path: Path, format: str = "onnx") -> None:
        """Write ``weights`` as a model in ``format`` (one of :attr:`export_formats`) to
        ``path``, for use without fedq or PyTorch."""
        if format not in self.export_formats:
            raise AppError(f"a PyTorch app writes {', '.join(self.export_formats)}, not {format}")
        write_onnx(self.model_of(weights), self._example_batch(), path)

    def _example_batch(self) -> np.ndarray:
        if self._example is not None:
            return self._example
        x = self._load_test()[0] if self._load_test else self._load_partition(Partition())[0]
        return x[:2]

    def evaluate(self, weights: Weights) -> dict[str, float] | None:
        if self._load_test is None:
            return None
        model = self._model("evaluate")
        load_weights(model, weights)
        return self._evaluate(model, self._load_test(), self.device)
