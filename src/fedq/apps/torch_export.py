"""A ``torch.nn.Module`` written out as ONNX, for ONNX Runtime and every tool that reads it.

Through ``torch.onnx.export``'s ``torch.export``-based exporter (``dynamo=True``, PyTorch's
default since 2.9; the TorchScript one is deprecated), which needs ``onnx`` and
``onnxscript``: the ``onnx`` extra installs them. What must stay true of the file:

- one file: the weights are inside it, not in a ``.data`` file beside it (the exporter's
  default), so the path the user named is the whole model; only a model over protobuf's
  2 GB limit has its weights beside it, as ONNX requires;
- the batch dimension is dynamic, so it takes any number of examples, not only the
  example's;
- the graph is the module in ``eval()`` mode: batch norm uses its running statistics,
  dropout is off, as in the coordinator's evaluation.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedq.participant.app import AppError

#: The names of the graph's input and output, which ONNX Runtime's ``run`` is fed by.
INPUT_NAME, OUTPUT_NAME = "input", "output"


def write_onnx(model: nn.Module, example: np.ndarray, path: Path) -> None:
    """``path``: ``model``'s forward pass as ONNX, traced on ``example`` (a batch of at
    least two inputs: torch.export treats a dimension of size 1 as fixed)."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise AppError(f"ONNX export needs {', '.join(missing)}: pip install 'fedq[onnx]'")
    device = next(model.parameters()).device
    sample = torch.from_numpy(np.ascontiguousarray(example)).to(device)
    model.eval()
    exporter = logging.getLogger("torch.onnx")  # one warning per torchvision op it lacks
    level = exporter.level
    exporter.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecations inside torch.export, not the user's
            program = torch.onnx.export(
                model,
                (sample,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
                verbose=False,
            )
    finally:
        exporter.setLevel(level)
    if program is None:  # only the TorchScript exporter returns None
        raise AppError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
