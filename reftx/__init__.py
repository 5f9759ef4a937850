"""reftx: representation finetuning on frozen language models.

    import reftx
    base, tok = reftx.load_model("default")   # SmolLM2-135M-Instruct, offline
    model = reftx.attach(base, [{"kind": "loreft", "rank": 4, "layers": [2, 5],
                                 "positions": {"first": 3, "last": 3}, "tie": "positions"}])
    res = reftx.run("experiments/quickstart.yaml", seed=1)   # a YAML experiment, as `reftx run` runs it

The folders are the layers (README, "Layout"); imports point down only:
core < config < models < engine < parts, data < eval < train < zoo (reftx.methods, reftx.tasks)
< integrations < runs < recipes < cli.
"""
from reftx.core import compat, quiet

quiet.install()  # before peft (and with it bitsandbytes) is first imported
from reftx.core.version import __version__
from reftx.core.errors import ConfigError, DataError, ReftError
from reftx.core.intervention import Context, Intervention, available_interventions, register_intervention
from reftx.models.loading import load_model
from reftx.engine.model import ReftModel, attach
from reftx.engine.multi import MultiReft
from reftx.engine.schedule import plan
import reftx.parts.basis_gates  # noqa: F401  (registers the shared modifiers)
import reftx.parts.input_gates  # noqa: F401
import reftx.parts.norm_bounds  # noqa: F401
import reftx.parts.slot_bank  # noqa: F401  (the editing engine's slot bank kind)
import reftx.train.objectives  # noqa: F401  (registers the objectives)
from reftx.recipes.api import run

compat.install()  # the pre-0.2 module paths (reftx.engine.model, reftx.engine.hooks, ...) as aliases

# The shipped zoo (reftx.methods, reftx.tasks) and installed plugins are not imported here: every
# registry lookup loads them once through reftx.core.plugins, the one plugin-loading place.

__all__ = [
    "ConfigError",
    "Context",
    "DataError",
    "Intervention",
    "MultiReft",
    "ReftError",
    "ReftModel",
    "__version__",
    "attach",
    "available_interventions",
    "load_model",
    "plan",
    "register_intervention",
    "run",
]
