"""reftx report (reftx.runs.gather, compare, report) on synthetic run folders whose intervals and
p-values are computed by hand (and cross-checked with scipy): groups over seeds, McNemar, the sign
test, Holm, the minimum detectable effect, F1 re-aggregated by the paired bootstrap, one seed, missing
cells, mismatched eval sets, and never overwriting an earlier report."""
from __future__ import annotations

import csv
import json
import math

import pytest
from scipy import stats as sps

from reftx.cli.commands import main
from reftx.core.errors import ConfigError, ReftError
from reftx.runs import stats
from reftx.runs.report import make_report
from reftx.runs.report_plots import band
from tests.unit.runs.report_fixtures import IDS, config, correct, write_run

T975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # Student t(0.975, 2 df), closed form for 2 df
T80_2 = 0.6 / math.sqrt(2 * 0.8 * 0.2)
Z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def two_methods(tmp_path, right_a=(7, 8, 6), right_b=(5, 5, 6), extra=None):
    """loreft and direft over seeds 0-2 on the same 10 examples; run k of loreft gets the first
    right_a[k] right. ``extra``: more per-example metrics, {key: (a counts, b counts)}."""
    paths = []
    for name, kind, counts, side in (("lo", "loreft", right_a, 0), ("di", "direft", right_b, 1)):
        for seed, n in enumerate(counts):
            per = correct(n)
            for key, both in (extra or {}).items():
                for i, row in correct(both[side][seed], key).items():
                    per[i] |= row
            paths.append(str(write_run(tmp_path / f"{name}{seed}", config(name, kind, seed), per,
                                       losses=[1.0 + 0.1 * seed, 0.5])))
    return paths


def test_groups_mcnemar_sign_test_and_mde_by_hand(tmp_path):
    out = make_report(two_methods(tmp_path), out=str(tmp_path / "rep"))
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "groups.csv", "metrics.png", "pairs.csv",
                                                      "report.md"]
    g = {r["group"]: r for r in rows(out / "groups.csv")}
    half_lo = T975_2 * 0.1 / math.sqrt(3)  # accuracies 0.7, 0.8, 0.6: s = 0.1
    s_di = math.sqrt(((0.5 - 1.6 / 3) ** 2 * 2 + (0.6 - 1.6 / 3) ** 2) / 2)  # 0.5, 0.5, 0.6
    assert float(g["lo"]["mean"]) == pytest.approx(0.7) and float(g["lo"]["high"]) == pytest.approx(0.7 + half_lo)
    assert float(g["di"]["low"]) == pytest.approx(1.6 / 3 - T975_2 * s_di / math.sqrt(3))
    assert (g["lo"]["n"], g["lo"]["seeds"], g["lo"]["examples"], g["lo"]["trainable_parameters"],
            g["lo"]["wall_seconds"], g["lo"]["cpu_seconds"]) == ("3", "0 1 2", "10", "520", "10.0", "20.0")
    (p,) = rows(out / "pairs.csv")
    # discordant pairs: seed 0 e5-e6, seed 1 e5-e7 right only under loreft (b = 5), none the other way
    assert (p["a"], p["b"], p["test"]) == ("lo", "di", "McNemar exact (b=5, c=0)")
    assert float(p["p"]) == 2 / 2 ** 5 == sps.binomtest(5, 5).pvalue and float(p["p_holm"]) == 0.0625
    assert float(p["diff"]) == pytest.approx(0.5 / 3)  # (0.2 + 0.3 + 0) / 3
    # per-seed differences 0.2, 0.3, 0.0: the tie is dropped, +2 of 2: p = 2 / 4
    assert (p["sign_p"], p["sign_positive"], p["sign_negative"], p["sign_ties"]) == ("0.5", "2", "0", "1")
    sd = math.sqrt((5 * (5 / 6) ** 2 + 25 * (1 / 6) ** 2) / 29)  # 30 (seed, example) differences: five 1s
    assert float(p["mde"]) == pytest.approx(Z * sd / math.sqrt(30))
    assert float(p["low"]) <= float(p["diff"]) <= float(p["high"])
    md = (out / "report.md").read_text()
    assert "| lo | 0, 1, 2 | 3 | 10 | 0.7000 ± 0.2484 | 520 | 10.0 | 20.0 |" in md
    assert "| accuracy | lo | di | 0.1667 |" in md and "| 0.5 (+2/−0/=1) |" in md


def test_holm_over_the_table(tmp_path):
    # "open": seed 0 has e2, e3 right under loreft only (b = 2, c = 0): p = 0.5; accuracy p = 0.0625
    paths = two_methods(tmp_path, extra={"open": ((4, 2, 2), (2, 2, 2))})
    out = make_report(paths, out=str(tmp_path / "rep"))
    got = {r["metric"]: (float(r["p"]), float(r["p_holm"])) for r in rows(out / "pairs.csv")}
    assert got == {"accuracy": (0.0625, 0.125), "open": (0.5, 0.5)}  # 2 x 0.0625; max(0.125, 1 x 0.5)


def test_one_seed_interval_refused_and_set_level_metric_over_seeds(tmp_path):
    paths = []
    for seed, (a, b) in enumerate([(0.9, 0.5), (0.8, 0.6), (0.7, 0.4)]):  # forget_quality: no per-example value
        for name, kind, v in (("lo", "loreft", a), ("di", "direft", b)):
            paths.append(str(write_run(tmp_path / f"{name}{seed}", config(name, kind, seed), correct(6),
                                       metrics={"accuracy": 0.6, "forget_quality": v})))
    paths.append(str(write_run(tmp_path / "one", config("one", "noreft", 7), correct(6))))
    out = make_report(paths, metrics=["forget_quality", "accuracy"], out=str(tmp_path / "rep"))
    pairs = {(r["a"], r["b"], r["metric"]): r for r in rows(out / "pairs.csv")}
    fq = pairs["lo", "di", "forget_quality"]
    half = T975_2 * 0.1 / math.sqrt(3)  # differences 0.4, 0.2, 0.3: mean 0.3, s = 0.1
    assert fq["test"] == "sign test over seeds" and float(fq["p"]) == 0.25 == sps.binomtest(3, 3).pvalue
    assert (float(fq["diff"]), float(fq["low"]), float(fq["high"])) == pytest.approx((0.3, 0.3 - half, 0.3 + half))
    assert float(fq["mde"]) == pytest.approx((T975_2 + T80_2) * 0.1 / math.sqrt(3))
    one = {r["metric"]: r for r in rows(out / "groups.csv") if r["group"] == "one"}
    assert (one["accuracy"]["mean"], one["accuracy"]["low"], one["accuracy"]["high"]) == ("0.6", "", "")
    assert one["accuracy"]["note"] == "1 seed: no interval (the spread over seeds needs 2 or more)"
    md = (out / "report.md").read_text()
    assert "| one | 7 | 1 | 10 | — | 0.6000 (no interval: 1 seed) |" in md
    assert "- one, accuracy: 1 seed: no interval (the spread over seeds needs 2 or more)" in md
    assert "- one: no run reports forget_quality (a missing cell)" in md
    acc = pairs["lo", "one", "accuracy"]  # seed 7 against seeds 0-2: the single run paired with each
    assert acc["test"] == "McNemar exact (b=0, c=0)" and acc["p"] == "1.0" and acc["diff"] == "0.0"
    assert acc["note"] == "one side's single run paired with every seed of the other"


def test_f1_is_reaggregated_by_the_paired_bootstrap(tmp_path):
    labels = [1, 1, 1, 0, 0, 0]
    ids = IDS[:6]
    per_a = {i: {"f1": [y, y, 0.9]} for i, y in zip(ids, labels)}  # every prediction right: F1 = 1
    preds_b = [1, 0, 0, 1, 0, 0]  # tp 1, fp 1, fn 2: precision 1/2, recall 1/3, F1 = 0.4
    per_b = {i: {"f1": [k, y, 0.5]} for i, k, y in zip(ids, preds_b, labels)}
    agg = {"f1": "binary_f1"}
    paths = [str(write_run(tmp_path / "a", config("a", "loreft", 0, n_eval=6), per_a, {"f1": 1.0}, agg)),
             str(write_run(tmp_path / "b", config("b", "direft", 0, n_eval=6), per_b, {"f1": 0.4}, agg))]
    (p,) = rows(make_report(paths, out=str(tmp_path / "rep")) / "pairs.csv")
    assert p["test"] == "paired bootstrap" and float(p["diff"]) == pytest.approx(0.6)
    assert float(p["low"]) <= 0.6 <= float(p["high"]) and 0 < float(p["p"]) < 1 and float(p["mde"]) > 0
    assert p["units"] == "6 examples × 1 seed pair"
    agg = {"f1": "my_f1"}  # a plugin's metric not imported here: compared over seeds, and said so
    paths = [str(write_run(tmp_path / "c", config("a", "loreft", 0, n_eval=6), per_a, {"f1": 1.0}, agg)),
             str(write_run(tmp_path / "d", config("b", "direft", 0, n_eval=6), per_b, {"f1": 0.4}, agg))]
    out = make_report(paths, out=str(tmp_path / "rep"))
    (p,) = rows(out / "pairs.csv")
    assert (p["test"], p["p"], p["low"], p["note"]) == ("sign test over seeds", "1.0", "",
                                                        "1 seed pair: no interval (the spread over seeds needs 2 or more)")
    assert "- f1: metric 'my_f1' is not registered here (a plugin? --import it); compared over seeds only" in \
        (out / "report.md").read_text()


def test_bootstrap_intervals_over_seeds_and_examples(tmp_path):
    paths = two_methods(tmp_path)
    out = make_report(paths, out=str(tmp_path / "rep"), use_bootstrap=True, metrics=["accuracy"])
    lo = next(r for r in rows(out / "groups.csv") if r["group"] == "lo")
    direct = stats.bootstrap([[float(k < n) for k in range(10)] for n in (7, 8, 6)])
    assert (float(lo["low"]), float(lo["high"])) == pytest.approx((direct.low, direct.high))
    assert "two-level bootstrap over seeds × examples" in (out / "report.md").read_text()


def test_mismatched_eval_sets_are_an_error_naming_the_runs(tmp_path, capsys):
    a = write_run(tmp_path / "a", config("a", "loreft", 0), correct(5))
    b = write_run(tmp_path / "b", config("b", "direft", 0), correct(5, ids=IDS[:9] + ["x9"]))
    with pytest.raises(ReftError, match=rf"^groups 'a' and 'b' \(same task section\): {a} and {b} were scored on "
                                        r"different eval examples \(1 ids only in the first, 1 only in the second, "
                                        r"e\.g\. e9\); evaluate both on the same set"):
        make_report([str(a), str(b)], out=str(tmp_path / "rep"))
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: groups 'a' and 'b'") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rep").exists()  # nothing written
    c = write_run(tmp_path / "c", config("a", "loreft", 1), correct(5, ids=IDS[:9] + ["x9"]))
    with pytest.raises(ReftError, match=rf"^group 'a': {a} and {c} were scored on different eval examples"):
        make_report([str(a), str(c)], out=str(tmp_path / "rep"))
    d = write_run(tmp_path / "d", config("d", "direft", 0, n_eval=9), correct(5, ids=IDS[:9]))
    out = make_report([str(a), str(d)], out=str(tmp_path / "rep"))  # another eval set: reported apart
    assert "- a vs d: not compared, different eval sets" in (out / "report.md").read_text()
    assert (out / "pairs.csv").read_text().count("\n") == 1  # the header only


def test_sweep_with_missing_cells(tmp_path):
    sweep = tmp_path / "sweep"
    cells = []
    for seed in range(3):  # named as reftx sweep names cells: method-hash
        write_run(sweep / "cells" / f"lo{seed}", config(f"loreft-3a{seed}f", "loreft", seed), correct(6 + seed))
        cells.append({"run_dir": f"cells/lo{seed}", "hash": f"h{seed}", "overrides": [f"seed={seed}"], "status": "done",
                      "wall_seconds": 1.0})  # extra keys are ignored
    write_run(tmp_path / "far" / "di0", config("di", "direft", 0), correct(5))  # ran elsewhere: absolute path
    cells += [{"run_dir": str(tmp_path / "far" / "di0"), "hash": "h3", "status": "done"},
              {"run_dir": "cells/di1", "hash": "h4", "overrides": ["seed=1"], "status": "failed", "error": "boom"},
              {"run_dir": "cells/di2", "hash": "h5", "status": "done"}]
    (sweep / "sweep.json").write_text(json.dumps({"cells": cells, "grid": {"seed": [0, 1, 2]}}))
    out = make_report([str(sweep)])
    assert out == sweep / "report"  # one sweep: its own report folder
    md = out.joinpath("report.md").read_text()
    assert f"- missing: {sweep} cell 4 (h4, {sweep / 'cells/di1'}): status failed (boom)" in md
    assert f"- missing: {sweep} cell 5 (h5, {sweep / 'cells/di2'}): no results.json" in md
    g = {r["group"]: r for r in rows(out / "groups.csv")}
    assert (g["loreft"]["n"], g["di"]["n"], g["di"]["note"]) == ("3", "1", "1 seed: no interval (the spread over "
                                                                       "seeds needs 2 or more)")
    again = make_report([str(sweep)])  # never over an earlier report
    assert again == sweep / "report-2" and out.joinpath("report.md").read_text() == md


@pytest.mark.parametrize("args, message", [
    (["--by", "train.lrr"], r"^--by: no run's config has the key 'train\.lrr' \(did you mean 'train\.lr'\?\)"),
    (["--metrics", "acuracy"], r"^--metrics: no run reports the metric 'acuracy' \(did you mean 'accuracy'\?\); "
                               r"reported: accuracy$"),
    (["--baseline", "loo"], r"^--baseline: no group is labelled 'loo' \(did you mean 'lo'\?\); groups: lo, di$"),
    (["--by", "method"], r"^group 'loreft' has two runs with seed 0: .*lo0 and .*lo0b; they differ in more than"),
])
def test_option_errors_name_the_option(tmp_path, args, message):
    paths = two_methods(tmp_path)
    paths.append(str(write_run(tmp_path / "lo0b", config("lo", "loreft", 0, lr=1e-2), correct(6))))
    if args[0] != "--by" or args[1] != "method":
        paths.pop()
    with pytest.raises((ConfigError, ReftError), match=message):
        make_report(paths, by=[args[1]] if args[0] == "--by" else None,
                    metrics=[args[1]] if args[0] == "--metrics" else None,
                    baseline=args[1] if args[0] == "--baseline" else None, out=str(tmp_path / "rep"))


def test_folders_that_are_not_runs(tmp_path, capsys):
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ReftError, match=r"unfinished holds no results\.json: the run has not finished; finish it "
                                        r"with reftx run --resume"):
        make_report([str(tmp_path / "unfinished")])
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert f"error: no run or sweep folder at {tmp_path / 'nowhere'}" in capsys.readouterr().err.replace("\n", "")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReftError, match=r"empty is not a run folder \(no config\.yaml\), a sweep folder"):
        make_report([str(tmp_path / "empty")])


def test_baseline_and_cli(tmp_path, capsys):
    paths = two_methods(tmp_path)
    paths.append(str(write_run(tmp_path / "x0", config("x", "noreft", 0), correct(3))))
    assert main(["report", *paths, "--baseline", "di", "--metrics", "accuracy", "--out", str(tmp_path / "r")]) == 0
    pairs = [(r["a"], r["b"]) for r in rows(tmp_path / "r" / "pairs.csv")]
    assert pairs == [("lo", "di"), ("x", "di")]
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.startswith(f"# reftx report\n\n`reftx report {' '.join(paths)} --metrics accuracy --baseline di`")
    assert f"wrote {tmp_path / 'r'}" in capsys.readouterr().err.replace("\n", "")


def test_learning_curve_band_by_hand():
    steps, mean, low, high = band([{1: 1.0, 2: 0.5, 3: 0.1}, {1: 1.2, 2: 0.7}, {1: 0.8, 2: 0.3}])
    assert steps == [1, 2] and mean == pytest.approx([1.0, 0.5])  # step 3: not every seed logged it
    half = T975_2 * 0.2 / math.sqrt(3)  # both steps: s = 0.2 over 3 seeds
    assert (low[0], high[0], low[1], high[1]) == pytest.approx((1.0 - half, 1.0 + half, 0.5 - half, 0.5 + half))
    assert band([{1: 2.0}]) == ([1], [2.0], None, None)  # one seed: its line, no band


def test_by_method_keeps_a_sweeps_methods_of_one_kind_apart(tmp_path):
    """Two sweep methods of one intervention kind (an ablation) are two groups under --by method,
    labelled as the sweep labels them; a run folder given outside a sweep is grouped by its kinds."""
    sweep = tmp_path / "sweep"
    cells = []
    for method, right in (("brep", (8, 7, 9)), ("brep_unbounded", (5, 6, 5))):
        for seed, n in enumerate(right):
            folder = f"{method}-{seed}"
            write_run(sweep / folder, config(folder, "loreft", seed, lr=1e-3 if method == "brep" else 2e-3), correct(n))
            cells.append({"run_dir": folder, "hash": f"{method}{seed}", "method": method, "status": "done"})
    (sweep / "sweep.json").write_text(json.dumps({"cells": cells}))
    loose = write_run(tmp_path / "di0", config("di", "direft", 0), correct(4))
    out = make_report([str(sweep), str(sweep / "brep-0"), str(loose)], by=["method"], out=str(tmp_path / "rep"))
    g = {r["group"]: r for r in rows(out / "groups.csv")}
    assert sorted(g) == ["brep", "brep_unbounded", "direft"]
    assert (g["brep"]["n"], g["brep_unbounded"]["n"]) == ("3", "3")  # brep-0, given twice, counted once
    assert float(g["brep"]["mean"]) == pytest.approx(0.8)
    (p,) = [r for r in rows(out / "pairs.csv") if {r["a"], r["b"]} == {"brep", "brep_unbounded"}]
    assert p["test"] == "McNemar exact (b=8, c=0)"  # 3 + 1 + 4 discordant, all for brep


def test_a_moved_sweep_folder_finds_its_cells_under_their_own_names(tmp_path):
    """sweep.json keeps each cell's absolute run_dir; after the sweep folder is moved (from a worktree
    or a cluster into the repository) a run_dir that no longer exists is read from the sweep folder,
    and one that still exists elsewhere is read where it is."""
    sweep, gone = tmp_path / "here", tmp_path / "gone"
    cells = []
    for seed, n in enumerate((6, 7, 8)):
        write_run(sweep / f"loreft-{seed}", config(f"loreft-{seed}", "loreft", seed), correct(n))
        cells.append({"run_dir": str(gone / f"loreft-{seed}"), "method": "loreft", "status": "done"})
    write_run(tmp_path / "far" / "loreft-3", config("loreft-3", "loreft", 3), correct(9))
    cells.append({"run_dir": str(tmp_path / "far" / "loreft-3"), "method": "loreft", "status": "done"})
    cells.append({"run_dir": str(gone / "loreft-4"), "method": "loreft", "status": "done"})  # neither here nor there
    (sweep / "sweep.json").write_text(json.dumps({"cells": cells}))
    out = make_report([str(sweep)], by=["method"])
    g = {r["group"]: r for r in rows(out / "groups.csv")}
    assert g["loreft"]["n"] == "4" and float(g["loreft"]["mean"]) == pytest.approx(0.75)  # (6+7+8+9)/40
    assert f"- missing: {sweep} cell 4 (?, {gone / 'loreft-4'}): no results.json" in out.joinpath("report.md").read_text()


def test_a_sweep_that_chose_on_dev_is_read_by_its_then_cells(tmp_path):
    """--select ... --then: the selection cells were scored on dev (and the choice used them), so the
    report reads the --then cells only, and says how many it left out."""
    sweep = tmp_path / "sweep"
    cells = []
    for lr, n in ((1e-3, 2), (2e-3, 3)):  # stage 1: seed 0 on dev, two learning rates
        name = f"lo-dev-{lr}"
        write_run(sweep / name, config(name, "loreft", 0, lr=lr), correct(n))
        cells.append({"run_dir": name, "method": "loreft", "stage": "grid", "status": "done"})
    for seed, n in enumerate((6, 7, 8)):
        name = f"lo-{seed}"
        write_run(sweep / name, config(name, "loreft", seed, lr=2e-3), correct(n))
        cells.append({"run_dir": name, "method": "loreft", "stage": "then", "status": "done"})
    (sweep / "sweep.json").write_text(json.dumps({"cells": cells, "select": {"metric": "accuracy", "on": "dev"}}))
    out = make_report([str(sweep)], by=["method"])
    g = {r["group"]: r for r in rows(out / "groups.csv")}
    assert g["loreft"]["n"] == "3" and float(g["loreft"]["mean"]) == pytest.approx(0.7)
    assert (f"- {sweep}: its 2 selection-stage cells (scored on dev, where the choice was made) are left out"
            in out.joinpath("report.md").read_text())
    index = json.loads((sweep / "sweep.json").read_text())
    (sweep / "sweep.json").write_text(json.dumps({**index, "select": None}))  # a plain grid: every cell counts
    with pytest.raises(ReftError, match="two runs with seed 0"):
        make_report([str(sweep)], by=["method"])
