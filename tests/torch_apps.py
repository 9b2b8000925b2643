"""Small PyTorch apps for tests, importable by a ``fedq`` subprocess as
``tests.torch_apps:NAME``."""

from __future__ import annotations

from fedq.apps.torch_fmnist import make_app

#: The shipped ``fedq.apps.torch_fmnist`` app (NIID-Bench's CNN on Fashion-MNIST) on the
#: first 300 images of each participant's share and 200 held-out ones: a federation of it
#: runs in seconds.
small_fmnist = make_app(train_rows=300, test_rows=200)
