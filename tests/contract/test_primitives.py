"""The contract every registered primitive must meet; a new primitive is tested the moment it registers. The suite lives in
reftx/testing/contract/test_primitives.py (shipped, so ``reftx check KIND`` runs it on out-of-tree variants);
collected here for the project's own registry."""
from reftx.testing.contract.test_primitives import *  # noqa: F401,F403
