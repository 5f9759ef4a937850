"""The contract over the registries' products, not only defaults: every primitive × every modifier The suite lives in
reftx/testing/contract/test_compositions.py (shipped, so ``reftx check KIND`` runs it on out-of-tree variants);
collected here for the project's own registry."""
from reftx.testing.contract.test_compositions import *  # noqa: F401,F403
