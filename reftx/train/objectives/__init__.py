"""Training objectives: how a batch becomes a loss term, one file per family (``common``: the
registry, nll, classify and the unlearning objectives; ``grpo``; ``carft``; ``nlft``; ``ppo``, with
``anchor``, the RL objectives' KL reference). Importing the
package registers them all; ``from reftx.train.objectives import register_objective, result`` is the
path an objective in a user module uses.
"""
from reftx.train.objectives import carft, grpo, nlft, ppo  # noqa: F401  (registrations)
from reftx.train.objectives.common import OBJECTIVES, Result, register_objective, result

__all__ = ["OBJECTIVES", "Result", "register_objective", "result"]
