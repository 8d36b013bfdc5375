"""Set-up shared by the whole suite.

``make test`` runs the suite on pytest-xdist workers, one per core. Each worker (and every process a test
starts, which inherits the environment) gets one BLAS/OpenMP thread, so two workers on two cores do not
oversubscribe them. This runs before any test module imports torch or numpy, as the thread pools are sized on
import.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
