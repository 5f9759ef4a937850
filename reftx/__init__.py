"""reftx: representation finetuning on frozen language models.

    import reftx
    base, tok = reftx.load_model("default")   # SmolLM2-135M-Instruct, offline
    model = reftx.attach(base, [{"kind": "loreft", "rank": 4, "layers": [2, 5],
                                 "positions": {"first": 3, "last": 3}, "tie": "positions"}])
"""
from .version import __version__  # noqa: E402

from .errors import ConfigError, DataError, ReftError  # noqa: E402
from .intervention import (  # noqa: E402
    Context,
    Intervention,
    available_interventions,
    register_intervention,
)
from .hub import load_model  # noqa: E402
from .model import ReftModel, attach  # noqa: E402
from .schedule import plan  # noqa: E402

from . import basis_gates, input_gates, nlft, norm_bounds, objectives, reinforce, slot_bank  # noqa: E402,F401  (register shared parts and objectives)

# The shipped zoo (reftx.methods, reftx.tasks) and installed plugins are not imported here: every
# registry lookup loads them once through reftx.plugins, the one plugin-loading place.

__all__ = [
    "ConfigError",
    "Context",
    "DataError",
    "Intervention",
    "ReftError",
    "ReftModel",
    "__version__",
    "attach",
    "load_model",
    "available_interventions",
    "plan",
    "register_intervention",
]
