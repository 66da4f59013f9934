"""Reproduction of the paper's studies with wsdet (resumable, cached).

Run ``python -m wsdet.experiments mnist --out runs/mnist`` (add ``--smoke`` for a tiny
end-to-end check) or ``python -m wsdet.experiments lesions3d --out runs/lesions3d``.
Start the same command in a second shell to train two networks at once (each process takes
the networks nobody else is training; ``--threads 1`` each on a 2-core machine).
"""

from wsdet.experiments.common import Store, TrainJob, config_key, train_all, train_cached
from wsdet.experiments.mnist import MNISTStudyConfig, run_mnist

__all__ = [
    "MNISTStudyConfig",
    "Store",
    "TrainJob",
    "config_key",
    "run_mnist",
    "train_all",
    "train_cached",
]
