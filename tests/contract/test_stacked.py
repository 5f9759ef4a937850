"""Stacked interventions equal one at a time. The suite lives in reftx/testing/contract/test_stacked.py
(shipped, so ``reftx check KIND`` runs it on out-of-tree variants); collected here for the project's own registry."""
from reftx.testing.contract.test_stacked import *  # noqa: F401,F403
