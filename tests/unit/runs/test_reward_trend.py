"""scripts/reward_trend.py on run folders whose rewards are chosen so that every figure is worked by hand."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[3]


def _script():
    spec = importlib.util.spec_from_file_location("reward_trend", REPO / "scripts" / "reward_trend.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(folder, seed, rewards):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"seed: {seed}\n")
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "obj/reward": r}) + "\n"
                                                  for i, r in enumerate(rewards)) + '{"eval": 1}\n')


def test_reward_change_per_seed_interval_and_welch(tmp_path):
    # steps=2: seed 1 goes 0.2,0.4 -> 0.5,0.7 (+0.3); seed 0 goes 0.1,0.3 -> 0.2,0.2 (0.0), listed by seed
    _run(tmp_path / "b", 1, [0.2, 0.4, 0.9, 0.5, 0.7])
    _run(tmp_path / "a", 0, [0.1, 0.3, 0.0, 0.2, 0.2])
    line = _script().trend(str(tmp_path / "*"), 2)
    half = stats.t.ppf(0.975, 1) * (0.3 / math.sqrt(2)) / math.sqrt(2)  # sd of (0, 0.3) is 0.3/sqrt(2)
    t = stats.ttest_ind([0.2, 0.2, 0.5, 0.7], [0.1, 0.3, 0.2, 0.4], equal_var=False)
    assert line == (f"{tmp_path}/*: mean reward 0.250 -> 0.400 (first/last 2 steps); seed 0 +0.000, seed 1 +0.300; "
                    f"change +0.150 [{0.15 - half:+.3f}, {0.15 + half:+.3f}] over seeds; "
                    f"Welch over step means t = {t.statistic:.2f}, p = {t.pvalue:.2g}")


def test_too_few_steps_or_seeds_is_named(tmp_path):
    _run(tmp_path / "a", 0, [0.1, 0.2, 0.3])
    with pytest.raises(SystemExit, match=r"a: 3 steps logged obj/reward; need 4"):
        _script().trend(str(tmp_path / "*"), 2)
    with pytest.raises(SystemExit, match=r"1 run\(s\); need 2 or more seeds"):
        _script().trend(str(tmp_path / "*"), 1)
