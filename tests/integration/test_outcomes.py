"""Per-example outcomes (reftx.eval.outcomes): every task of the zoo, found through the registry,
writes every metric's per-example values to samples.jsonl with a stable example id, and they
aggregate back to results.json's numbers (only set-level metrics have none); then ``reftx report``
on real runs of a tiny model pairs them example by example."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import reftx.tasks  # noqa: F401  (registers the zoo)
from reftx.cli.commands import main
from reftx.config.schema import load_experiment
from reftx.eval.metrics import get_metric, mean
from reftx.eval.task import TASKS, available_tasks, default_data_dir
from reftx.recipes import train as runner

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
CLASSIFIER = ["model.task=sequence-classification", "model.num_labels=2", "model.chat_template=false"]
# task -> (overrides, the metrics reported with no per-example value: set-level numbers)
CASES = {
    "persona": (["task.n_eval=3"], set()),
    "mcq": (["task.name=mcq", "task.options={}", "task.n_eval=3"], set()),
    "math": (["task.name=math", "task.options={datasets: [svamp, mawps], n_per_dataset: 2}"], set()),
    "commonsense": (["task.name=commonsense", "task.options={dataset: boolq}", "task.n_eval=3"], set()),
    "knowledge_edit": (["task.name=knowledge_edit", "task.options={dataset: counterfact}", "task.n_eval=3"], set()),
    "tofu_qa": (["task.name=tofu_qa", "task.options={retain_authors: 1}", "task.n_eval=3"], set()),
    "tofu_unlearn": (["task.name=tofu_unlearn", "task.eval_split=tofu",
                      "task.options={retain_authors: 2, n_utility: 2, n_forget_eval: 3, memorization: true}"],
                     {"model_utility"}),
    "hdfs": (["task.name=hdfs", "task.options={max_lines: 8, eval_prevalence: 0.03}", "task.n_eval=6", *CLASSIFIER],
             set()),
    "bgl": (["task.name=bgl", "task.options={window: fixed, window_size: 10}", "task.n_eval=6", *CLASSIFIER], set()),
}
needs_data = pytest.mark.skipif(default_data_dir() is None, reason="shared data (REFTX_DATA) not available")


def test_every_zoo_task_has_a_case():
    zoo = {name for name in available_tasks() if TASKS.get(name).__module__.startswith("reftx.tasks.")}
    assert zoo == set(CASES)


def samples(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]


@needs_data
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_metric_is_written_per_example(tiny_dir, tmp_path, name):
    overrides, set_level = CASES[name]
    exp = load_experiment(QUICKSTART, [f"model.name={tiny_dir}", f"output_dir={tmp_path}", "eval.max_new_tokens=3",
                                       "eval.show_examples=0", *overrides])
    results = runner.evaluate_base(exp, show_progress=False)
    rows = samples(tmp_path / "quickstart" / "baseline")
    ids = [r["id"] for r in rows]
    assert len(rows) == results["n_eval"] and len(set(ids)) == len(ids)
    without = set()
    for key, value in results["metrics"].items():
        values = [r["metrics"][key] for r in rows if key in r.get("metrics", {})]
        if not values:
            without.add(key)
            continue
        named = {r["aggregates"][key] for r in rows if key in r.get("aggregates", {})}
        aggregate = get_metric(named.pop()).aggregate if named else mean
        assert aggregate(values) == pytest.approx(value, rel=1e-6, nan_ok=True), key
    assert without == set_level


def test_ids_are_stable_across_seeds_and_report_pairs_real_runs(tiny_dir, tmp_path, capsys):
    base = [f"model.name={tiny_dir}", f"output_dir={tmp_path / 'runs'}", "train.max_steps=2", "train.batch_size=4",
            "task.n_eval=4", "eval.max_new_tokens=3", "eval.show_examples=0", "interventions.0.layers=[1, 2]"]
    for seed in (0, 1):
        runner.run(load_experiment(QUICKSTART, [*base, f"seed={seed}", f"name=lo{seed}"]), show_progress=False)
    runner.evaluate_base(load_experiment(QUICKSTART, [*base, "name=lo0"]), show_progress=False)
    runs = [tmp_path / "runs" / n for n in ("lo0", "lo1", "lo0/baseline")]
    assert [[r["id"] for r in samples(p)] for p in runs[1:]] == [[r["id"] for r in samples(runs[0])]] * 2
    results = json.loads((runs[0] / "results.json").read_text())
    assert results["cpu_seconds"] > 0 and results["wall_seconds"] > 0
    assert main(["report", *map(str, runs), "--metrics", "persona_open,distinct_2", "--out",
                 str(tmp_path / "rep")]) == 0
    with open(tmp_path / "rep" / "pairs.csv", newline="") as f:
        pairs = {(r["a"], r["b"], r["metric"]): r for r in csv.DictReader(f)}
    # the trained runs form one group over seeds 0 and 1 (labelled by their names' prefix); the base
    # model (named lo0) its own, paired with both seeds
    assert set(pairs) == {("lo", "lo0", m) for m in ("persona_open", "distinct_2")}
    open_pair = pairs["lo", "lo0", "persona_open"]
    assert open_pair["test"].startswith("McNemar exact") and open_pair["units"] == "4 examples × 2 seed pairs"
    assert pairs["lo", "lo0", "distinct_2"]["test"] in ("paired bootstrap", "McNemar exact (b=0, c=0)")
