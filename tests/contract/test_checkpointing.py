"""Gradient checkpointing with every registered primitive, modifier and schedule. The suite lives in
reftx/testing/contract/test_checkpointing.py (shipped, so ``reftx check KIND`` runs it on out-of-tree variants);
collected here for the project's own registry."""
from reftx.testing.contract.test_checkpointing import *  # noqa: F401,F403
