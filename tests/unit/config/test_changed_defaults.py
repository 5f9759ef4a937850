"""Objective defaults that changed after results were published (reftx/config/hashing.py
CHANGED_DEFAULTS): a run under today's default never shares a config hash with a published run under
the former one, and a config that spells the former default keeps the hash it was published with."""
from __future__ import annotations

from pathlib import Path

from reftx.config.hashing import config_hash, hash_differences, hashed_view

REPO = Path(__file__).resolve().parents[3]
BETA = "train.objective_options.beta=0.04"


def _stage(*options: str, objective: str = "grpo") -> dict:
    return {"seed": 0, "recipe": {"name": "sequential", "stages": [
        [], [f"train.objective={objective}", "train.batch_size=2", *options]]}}


def _top(objective: str, **options) -> dict:
    return {"seed": 0, "train": {"objective": objective, "objective_options": options}}


def test_grpo_anchor_default_hashes_apart_from_the_former_one() -> None:
    absent, start = _stage(BETA), _stage(BETA, "train.objective_options.kl_reference=start")
    base = _stage(BETA, "train.objective_options.kl_reference=base")
    assert config_hash(absent) == config_hash(start)  # absent means today's default
    assert config_hash(absent) != config_hash(base)
    assert hash_differences(absent, base) == ["recipe.stages.1"]  # the stage that holds the anchor
    assert config_hash(_top("grpo")) == config_hash(_top("grpo", kl_reference="start"))
    assert config_hash(_top("grpo")) != config_hash(_top("grpo", kl_reference="base"))


def test_anchor_only_where_the_kl_is_on_and_only_for_objectives_that_changed() -> None:
    for zero in ("0", "0.0"):  # beta 0: no KL, nothing respelled (published beta-0 hashes stay)
        off = _stage(f"train.objective_options.beta={zero}")
        assert hashed_view(off)["recipe"] == off["recipe"]
    # ppo was born with kl_reference: start, so base and absent differ as any two values do, and
    # nothing is added to a ppo config
    assert config_hash(_stage(objective="ppo")) != config_hash(
        _stage("train.objective_options.kl_reference=base", objective="ppo"))
    assert config_hash(_top("ppo")) == config_hash({"seed": 0, "train": {"objective": "ppo", "objective_options": {}}})
    assert config_hash(_top("nll")) != config_hash(_top("grpo"))


def test_carft_representation_and_anchor_defaults() -> None:
    rep = "train.objective_options.contrastive.representation"
    assert config_hash(_stage(objective="carft")) == config_hash(
        _stage("train.objective_options.kl_reference=start", f"{rep}=projection", objective="carft"))
    assert config_hash(_stage(objective="carft")) != config_hash(_stage(f"{rep}=pooled", objective="carft"))
    assert config_hash(_top("carft", contrastive={"representation": "pooled"}, kl_reference="base")) != \
        config_hash(_top("carft"))


def test_published_runs_under_former_defaults_keep_their_recorded_hashes() -> None:
    """The hashes the runs themselves recorded (results.json of runs/issue17, quoted in docs/results.md
    before issue 26): the files now spell the former defaults, and still hash as they did."""
    from reftx.config.schema import load_experiment

    recorded = {"math_carft_pooled_loreft": "31eedc75485c", "math_grpo_loreft": "eaef168501dc",
                "math_grpo_g8_loreft": "dd4648948dce"}
    for name, chash in recorded.items():
        exp = load_experiment(REPO / "experiments" / "math" / f"{name}.yaml", ["output_dir=runs/issue17"])
        assert config_hash(exp.to_dict()) == chash, name
        default = exp.to_dict()
        default["recipe"]["stages"][1] = [o for o in default["recipe"]["stages"][1]
                                          if "kl_reference" not in o and "representation" not in o]
        assert config_hash(default) != chash, name  # today's defaults: another result, another hash
