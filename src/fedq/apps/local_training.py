"""How a Keras model trains locally each round: a fresh optimizer, the flags' learning rate
and momentum, and FedProx's proximal term.

One :class:`LocalTraining` belongs to one participant's model (never shared between
threads). What must stay true:

- *Fresh optimizer* (the default) means each round starts from the optimizer's state right
  after it was built: its iteration count, momentum or Adam moments, and the compiled
  learning rate. It is restored by assigning the values saved at build time, so the
  traced training function is reused (no re-tracing per round) and optimizers whose
  initial state is not zero (Adagrad's accumulators) still start where Keras starts them.
- *Momentum* is fixed when the optimizer is built: Keras bakes it into the traced update
  step and creates SGD's momentum slots only if it is not 0. So it is set before the build,
  and a later round asking for another momentum is an error, not silently ignored.
- *FedProx* (Li et al., 2020) adds mu/2 * ||w - w_global||^2 over the trainable weights to
  the loss Keras computes, by wrapping the model's ``compute_loss``. The global weights are
  held in non-trainable variables assigned each round, and mu in a variable, so changing
  them does not re-trace either. The ``loss`` that ``fit`` reports then includes the term.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedq.participant.app import AppError, TrainConfig


class LocalTraining:
    def __init__(self, model: Any) -> None:
        if getattr(model, "optimizer", None) is None:
            raise AppError(
                "the app's model has no optimizer: build_model must return a compiled model "
                "(model.compile(optimizer=..., loss=...))"
            )
        self.model = model
        self._fresh: list[np.ndarray] | None = None
        self._anchors: list[Any] | None = None
        self._mu: Any = None
        #: Whether a weight decay was set (it cannot change once ``fit`` used it).
        self._decay_fixed = False

    @property
    def optimizer(self) -> Any:
        return self.model.optimizer

    def prepare(self, config: TrainConfig) -> None:
        """Call after the round's global weights are in the model and before ``fit``."""
        if self._fresh is None:
            self._build(config.momentum)
        elif config.momentum is not None and config.momentum != self._momentum():
            raise AppError(
                f"momentum {config.momentum}: the optimizer was built with momentum "
                f"{self._momentum()} and it cannot change between rounds"
            )
        assert self._fresh is not None
        if not config.keep_optimizer:
            for variable, value in zip(self.optimizer.variables, self._fresh, strict=True):
                variable.assign(value)
        if config.learning_rate is not None:
            self._set_learning_rate(config.learning_rate)
        if config.weight_decay is not None:
            self._set_weight_decay(config.weight_decay)
        if config.proximal_mu > 0 and self._anchors is None:
            self._install_proximal_term()
        if self._anchors is not None:
            for anchor, weight in zip(self._anchors, self.model.trainable_weights, strict=True):
                anchor.assign(weight)
            self._mu.assign(config.proximal_mu)

    def _momentum(self) -> float | None:
        value = getattr(self.optimizer, "momentum", None)
        return None if value is None else float(value)

    def _build(self, momentum: float | None) -> None:
        optimizer = self.optimizer
        if momentum is not None:
            if not hasattr(optimizer, "momentum"):
                raise AppError(
                    f"momentum {momentum}: the app's optimizer {type(optimizer).__name__} "
                    "has none (SGD and RMSprop have)"
                )
            if optimizer.built and momentum != self._momentum():
                raise AppError(
                    f"momentum {momentum}: the app's optimizer is already built with "
                    f"momentum {self._momentum()}"
                )
            optimizer.momentum = momentum
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self._fresh = [np.array(v.numpy()) for v in optimizer.variables]

    def _set_weight_decay(self, decay: float) -> None:
        """Keras applies it decoupled (w -= lr x decay x w each step), which for SGD is
        PyTorch's L2 weight decay, NIID-Bench's. It is read when ``fit`` builds its train
        step, so it cannot change between rounds."""
        current = getattr(self.optimizer, "weight_decay", None)
        if self._decay_fixed and decay != (current or 0.0):
            raise AppError(
                f"weight decay {decay}: the optimizer already trained with {current} and it "
                "cannot change between rounds"
            )
        self.optimizer.weight_decay = decay or None
        self._decay_fixed = True

    def _set_learning_rate(self, rate: float) -> None:
        try:
            self.optimizer.learning_rate = rate
        except TypeError:  # Keras refuses to overwrite a LearningRateSchedule
            raise AppError(
                f"learning rate {rate}: the app's optimizer follows a learning-rate "
                "schedule; set the rate in the app instead"
            ) from None

    def _install_proximal_term(self) -> None:
        from fedq.apps.keras_app import import_keras

        keras = import_keras()
        ops = keras.ops
        weights = list(self.model.trainable_weights)
        # Copies: a Variable made from another's value would alias it, and the term be 0.
        anchors = [
            keras.Variable(np.array(w.numpy()), trainable=False, name="fedprox_anchor")
            for w in weights
        ]
        mu = keras.Variable(0.0, trainable=False, name="fedprox_mu")
        task_loss = self.model.compute_loss

        def compute_loss(
            x: Any = None,
            y: Any = None,
            y_pred: Any = None,
            sample_weight: Any = None,
            training: bool = True,
        ) -> Any:
            loss = task_loss(x, y, y_pred, sample_weight, training=training)
            if not training:
                return loss
            distance = ops.sum(
                ops.stack(
                    [ops.sum(ops.square(w - a)) for w, a in zip(weights, anchors, strict=True)]
                )
            )
            return loss + 0.5 * mu * distance

        self.model.compute_loss = compute_loss
        self.model.make_train_function(force=True)
        self._anchors, self._mu = anchors, mu
