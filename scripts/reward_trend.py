"""Did the training reward rise? For each group of run folders (a shell glob, one per arm), the mean of
``obj/reward`` over the first and the last ``--steps`` optimizer steps (metrics.jsonl), its change per
seed (config.yaml's seed) with a Student-t 95% interval over seeds, and Welch's t-test over the step
means (each the mean reward of one step's sampled completions; steps treated as independent).

    python scripts/reward_trend.py "runs/math_rl/ppo_head/ppo_head-*" "runs/math_rl/arms/ppo-*"

Used for the reward rows of docs/results.md (issue 26 item 7); reftx report compares the final metrics."""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
import yaml
from scipy import stats


def trend(pattern: str, steps: int) -> str:
    firsts, lasts, deltas, seeds = [], [], [], []
    for d in sorted(map(Path, glob.glob(pattern)), key=lambda p: yaml.safe_load((p / "config.yaml").read_text())["seed"]):
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        reward = [r["obj/reward"] for r in rows if "obj/reward" in r]
        if len(reward) < 2 * steps:
            raise SystemExit(f"{d}: {len(reward)} steps logged obj/reward; need {2 * steps} (log_every: 1)")
        firsts += reward[:steps]
        lasts += reward[-steps:]
        deltas.append(np.mean(reward[-steps:]) - np.mean(reward[:steps]))
        seeds.append(yaml.safe_load((d / "config.yaml").read_text())["seed"])
    if len(deltas) < 2:
        raise SystemExit(f"{pattern}: {len(deltas)} run(s); need 2 or more seeds")
    delta = np.array(deltas)
    half = stats.t.ppf(0.975, len(delta) - 1) * delta.std(ddof=1) / np.sqrt(len(delta))
    welch = stats.ttest_ind(lasts, firsts, equal_var=False)
    per = ", ".join(f"seed {s} {x:+.3f}" for s, x in zip(seeds, delta))
    return (f"{pattern}: mean reward {np.mean(firsts):.3f} -> {np.mean(lasts):.3f} (first/last {steps} steps); {per}; "
            f"change {delta.mean():+.3f} [{delta.mean() - half:+.3f}, {delta.mean() + half:+.3f}] over seeds; "
            f"Welch over step means t = {welch.statistic:.2f}, p = {welch.pvalue:.2g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("groups", nargs="+", help="a quoted glob of run folders per arm")
    ap.add_argument("--steps", type=int, default=8, help="steps at each end (default 8)")
    args = ap.parse_args()
    for g in args.groups:
        print(trend(g, args.steps))


if __name__ == "__main__":
    main()
