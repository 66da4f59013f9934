"""Reproduction of the paper's studies with wsdet (resumable, cached).

Run ``python -m wsdet.experiments mnist --out runs/mnist`` (add ``--smoke`` for a tiny
end-to-end check) or ``python -m wsdet.experiments lesions3d --out runs/lesions3d``.
Start the same command in a second shell to train two networks at once (each process takes
the networks nobody else is training; ``--threads 1`` each on a 2-core machine).

Both studies are data (a :class:`~wsdet.experiments.runner.Plan` of networks, runs and
comparisons) run by one runner, :func:`~wsdet.experiments.runner.run_study`; each run is
named by a typed :class:`~wsdet.experiments.keys.RunKey`.
"""

from wsdet.experiments.common import Store, TrainJob, config_key, train_all, train_cached
from wsdet.experiments.keys import RunKey
from wsdet.experiments.lesions import LesionStudyConfig, run_lesions
from wsdet.experiments.mnist import MNISTStudyConfig, run_mnist
from wsdet.experiments.runner import RunOptions, run_study

__all__ = [
    "LesionStudyConfig",
    "MNISTStudyConfig",
    "RunKey",
    "RunOptions",
    "Store",
    "TrainJob",
    "config_key",
    "run_lesions",
    "run_mnist",
    "run_study",
    "train_all",
    "train_cached",
]
