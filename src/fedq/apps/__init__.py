"""The apps fedq ships: ``fedq.apps.synthetic:app`` (numpy only, for system benchmarks),
``fedq.apps.dense:app`` (the seed example) and ``fedq.apps.fmnist:app`` (a CNN on
Fashion-MNIST). What an app is lives in :mod:`fedq.participant.app`."""
