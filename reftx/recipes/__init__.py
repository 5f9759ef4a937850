"""Recipes: how the one training loop runs an experiment, chosen by its ``recipe:`` section
(``registry``; the recipes themselves: ``train``, ``tofu_stage1``, ``edit/``).

Before 0.2 the registry lived in this package's ``__init__``; its names still resolve here for one
release.
"""
from reftx.core.compat import forward

__getattr__ = forward(__name__, ("reftx.recipes.registry",))
