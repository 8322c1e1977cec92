"""A stand-in for torch-fidelity's Inception weights file: the real keys and shapes, random values.

The real file (``weights-inception-2015-12-05-6726825d.pth``, ~92 MB) cannot be downloaded in
tests. The writer lives in the package (``sngan.benchmarking``), where the GPU check needs it
too; the tests import it from here under the names they have always used.
"""

from __future__ import annotations

from sngan.benchmarking import random_inception_state_dict
from sngan.benchmarking import random_inception_weights as write_random_inception_weights

__all__ = ["random_inception_state_dict", "write_random_inception_weights"]
