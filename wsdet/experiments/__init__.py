"""Reproduction of the paper's studies with wsdet (resumable, cached).

Run ``python -m wsdet.experiments mnist --out runs/mnist`` (add ``--smoke`` for a tiny
end-to-end check) or ``python -m wsdet.experiments lesions3d --out runs/lesions3d``.
"""

from wsdet.experiments.common import Store, config_key
from wsdet.experiments.mnist import MNISTStudyConfig, run_mnist

__all__ = ["MNISTStudyConfig", "Store", "config_key", "run_mnist"]
