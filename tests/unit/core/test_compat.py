"""The pre-0.2 module paths still import, for one release, as the modules at their new homes."""
from __future__ import annotations

import importlib
import sys
import warnings

import pytest
import torch

import reftx
from reftx.core.compat import MOVED

# old spellings of names whose module became a package (or whose name moved to another module)
OLD_NAMES = [("reftx.config", "config_hash"), ("reftx.config", "load_yaml"), ("reftx.config", "from_dict"),
             ("reftx.data", "encode"), ("reftx.data", "collate_train"), ("reftx.parts", "register_primitive"),
             ("reftx.parts", "shared_rotations"), ("reftx.parts", "OrthoBasis"), ("reftx.train", "train"),
             ("reftx.train", "NonFiniteLoss"), ("reftx.recipes", "register_recipe"), ("reftx.recipes", "RECIPES"),
             ("reftx.task", "Example"), ("reftx.rundir", "atomic_write"), ("reftx.checkpoints", "sha256_file"),
             ("reftx.lm_eval_adapter", "from_run"), ("reftx.lm_eval_adapter", "request_rows"),
             ("reftx.objectives", "finish"), ("reftx.cli", "main")]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_module_path_is_the_new_module(old):
    new = importlib.import_module(f"reftx.{MOVED[old]}")
    sys.modules.pop(f"reftx.{old}", None)  # the alias entry only (an earlier import's): import it afresh
    with pytest.warns(DeprecationWarning, match=f"reftx.{old} moved to reftx.{MOVED[old]}"):
        mod = importlib.import_module(f"reftx.{old}")
    assert mod is new and sys.modules[f"reftx.{old}"] is new


@pytest.mark.parametrize("module, name", OLD_NAMES)
def test_old_names_resolve(module, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert getattr(importlib.import_module(module), name) is not None


def test_finish_is_result_and_composes_nothing():
    out = {"aux_losses": {"gate_bce": torch.tensor(1.0)}}
    with pytest.warns(DeprecationWarning, match="is now result"):
        core, logs, same = importlib.import_module("reftx.train.objectives.common").finish(None, out, torch.tensor(2.0), {})
    assert core.item() == 2.0 and logs == {"objective": 2.0} and same is out


def test_a_primitive_with_a_removed_hook_is_refused():
    from dataclasses import dataclass

    class Old(reftx.Intervention):
        @dataclass(frozen=True)
        class Config:
            pass

        def parameter_losses(self):
            return {}

    with pytest.raises(TypeError, match="defines parameter_losses, which reftx 0.2 no longer calls"):
        reftx.register_intervention("old_style_probe")(Old)
