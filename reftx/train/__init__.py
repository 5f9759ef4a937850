"""Training: the one loss composition (``loss``), the one loop, a run's training job (``run``),
checkpoints, trackers and the objectives (one file per family).

Before 0.2 ``reftx.train`` was a module (a run's training job); its names still resolve here for one release.
"""
from reftx.core.compat import forward

__getattr__ = forward(__name__, ('reftx.train.run',))
