"""lm-evaluation-harness on a reftx model (reftx.recipes.lm_eval), offline: local YAML tasks over a
JSONL file, a tiny random llama with the default tokenizer and a LoReFT edit on {first: 2, last: 2}.
lm-eval's per-item log-likelihoods must equal reftx's own teacher-forced scorer, its generations
ReftModel.generate's, and the prompt edits must sit on each request's context only."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reftx import attach
import reftx.cli.commands as cli
from reftx.integrations import lm_eval as lm_eval_adapter
from reftx.recipes import lm_eval as lm_eval_run
from reftx.core.convert import dump_yaml
from reftx.core.errors import ReftError
from reftx.config.schema import load_experiment
from reftx.eval.scoring import score_continuations
from tests.conftest import perturb

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.tasks import TaskManager  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EDIT = [{"kind": "loreft", "rank": 2, "layers": [1, 2], "positions": {"first": 2, "last": 2}}]
QUESTIONS = ["Is the sky blue?", "What colour is fresh snow on a mountain in winter?", "Grass?",
             "Which of these is the colour of a ripe tomato, picked in late summer?", "Sea?"]
HEAD = """task: {name}
dataset_path: json
dataset_kwargs: {{{{data_files: {{{{test: {{data}}}}}}, cache_dir: {{cache}}}}}}
test_split: test
doc_to_text: "Question: {{{{{{{{question}}}}}}}}\\nAnswer:"
"""  # one local task over a JSON file; each task below adds its output type and metric
MC = HEAD.format(name="tiny_mc") + """output_type: multiple_choice
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}}]
"""
GEN = HEAD.format(name="tiny_gen") + """output_type: generate_until
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs: {{until: ["\\n\\n"], max_gen_toks: 6, do_sample: false}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    rows = [{"question": q, "choices": ["blue", "white", "green and tall", "red"], "answer": i % 4}
            for i, q in enumerate(QUESTIONS)]
    (d / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, text in (("mc", MC), ("gen", GEN)):
        (d / f"{name}.yaml").write_text(text.format(data=d / "items.jsonl", cache=d / "cache"))
    return d


@pytest.fixture(scope="module")
def reft(tiny_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    model = perturb(attach(base, EDIT), scale=0.5)
    yield model, AutoTokenizer.from_pretrained(tiny_dir)
    model.detach()


def run_tasks(model, tok, task_dir, tasks, batch_size=3):
    lm = lm_eval_adapter.ReftLM(model, tok, batch_size=batch_size, show_progress=False)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True)


def loglikelihoods(out):
    """[(context, continuation, loglikelihood, greedy)] of every request of tiny_mc, in order."""
    return [(*args, *resp[0]) for s in out["samples"]["tiny_mc"] for args, resp in zip(s["arguments"], s["resps"])]


def test_loglikelihoods_equal_reftx_scorer_and_differ_from_base(reft, task_dir):
    model, tok = reft
    got = loglikelihoods(run_tasks(model, tok, task_dir, ["tiny_mc"]))
    assert len(got) == 4 * len(QUESTIONS)
    ref = score_continuations(model, tok, [g[0] for g in got], [g[1] for g in got], batch_size=4)
    assert [g[2] for g in got] == pytest.approx([r.logprob for r in ref], abs=1e-5)
    assert [g[3] for g in got] == [r.token_accuracy == 1.0 for r in ref]
    with model.disabled():
        base = loglikelihoods(run_tasks(model, tok, task_dir, ["tiny_mc"]))
    assert [b[:2] for b in base] == [g[:2] for g in got]
    assert max(abs(b[2] - g[2]) for b, g in zip(base, got)) > 1e-2  # the interventions do something


def reference_generation(model, tok, context: str) -> str:
    ids = torch.tensor([tok(context)["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n\n")[0]


def test_generations_equal_reftx_generate(reft, task_dir):
    """Contexts of different lengths in one left-padded batch; each row as ReftModel.generate alone."""
    model, tok = reft
    samples = run_tasks(model, tok, task_dir, ["tiny_gen"], batch_size=5)["samples"]["tiny_gen"]
    contexts = [s["arguments"][0][0] for s in samples]
    assert contexts == [f"Question: {q}\nAnswer:" for q in QUESTIONS]
    got = [s["resps"][0][0] for s in samples]
    assert got == [reference_generation(model, tok, c) for c in contexts]
    with model.disabled():
        base = [reference_generation(model, tok, c) for c in contexts]
    assert got != base


def test_prompt_positions_land_on_the_context_only(reft):
    """A request's score is the forward whose prompt ends where the context does: changing or
    lengthening the continuation leaves the context's part alone. HFLM's own call (the whole row
    as the prompt, `last` positions on the continuation) gives another number."""
    model, tok = reft
    lm = lm_eval_adapter.ReftLM(model, tok, batch_size=2, show_progress=False)
    ctx = tok("Question: Is the sky blue?\nAnswer:")["input_ids"]
    short, long = tok(" yes", add_special_tokens=False)["input_ids"], tok(" yes it is", add_special_tokens=False)["input_ids"]
    (ll_short, _), (ll_long, _) = lm._loglikelihood_tokens([(None, ctx, short), (None, ctx, long)])
    ids = torch.tensor([ctx + long])

    def first_token_logprob(**kw) -> float:
        with torch.no_grad():
            logits = model(input_ids=ids, **kw).logits[0, len(ctx) - 1].float()
        return torch.log_softmax(logits, -1)[long[0]].item()

    def row_logprob(**kw) -> float:
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids, **kw).logits[0].float(), -1)
        return sum(lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(long))

    assert len(short) == 1 and len(long) == 3
    on_context = torch.tensor([len(ctx)])
    assert ll_short == pytest.approx(first_token_logprob(prompt_lengths=on_context), abs=1e-5)
    assert ll_long == pytest.approx(row_logprob(prompt_lengths=on_context), abs=1e-5)
    assert abs(ll_short - first_token_logprob()) > 1e-3  # whole row as the prompt: another value
    assert abs(ll_long - row_logprob()) > 1e-3


def test_rolling_loglikelihood_is_the_text_after_the_prefix_token(reft):
    """loglikelihood_rolling (perplexity tasks): one window here, whose context is lm-eval's prefix
    token; the prompt is that token alone."""
    from lm_eval.api.instance import Instance

    model, tok = reft
    lm = lm_eval_adapter.ReftLM(model, tok, batch_size=2, show_progress=False)
    text = "The sky is blue and the grass is green."
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = [lm.prefix_token_id, *tok(text)["input_ids"]]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids]), prompt_lengths=torch.tensor([1])).logits[0], -1)
    assert got == pytest.approx(sum(lp[i, t].item() for i, t in enumerate(ids[1:])), abs=1e-4)


def test_request_rows_keep_the_context_as_prompt_and_truncate_from_the_left():
    rows = lm_eval_adapter.request_rows([(None, [5, 6, 7], [8, 9]), (("c", "x"), [1, 2, 3, 4, 5, 6], [7, 8])], 5)
    assert [(r.input_ids, r.labels, r.prompt_len, r.truncated) for r in rows] == [
        ([5, 6, 7, 8, 9], [-100, -100, -100, 8, 9], 3, False),
        ([4, 5, 6, 7, 8], [-100, -100, -100, 7, 8], 3, True)]
    with pytest.raises(ReftError, match="leaves no context token within max_length=5"):
        lm_eval_adapter.request_rows([(None, [1], [2, 3, 4, 5, 6])], 5)


def write_run(tiny_dir, tmp_path) -> Path:
    """A finished run's folder as `reftx run` leaves it: config.yaml and intervention/."""
    exp = load_experiment(REPO / "experiments" / "quickstart.yaml",
                          [f"model.name={tiny_dir}", f"output_dir={tmp_path / 'runs'}", "interventions.0.layers=[1, 2]"])
    run_dir = exp.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_yaml(exp.to_dict()))
    model = perturb(attach(AutoModelForCausalLM.from_pretrained(tiny_dir), exp.interventions))
    model.save_pretrained(run_dir / "intervention")
    model.detach()
    return run_dir


def test_cli_evaluates_a_run_dir_and_writes_only_lm_eval(tiny_dir, task_dir, tmp_path, capsys):
    run_dir = write_run(tiny_dir, tmp_path)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    argv = ["lm-eval", str(run_dir), "--tasks", "tiny_mc", "--include-path", str(task_dir), "--limit", "3",
            "--batch-size", "2", "--no-chat-template", "--no-progress"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    path = run_dir / "lm_eval" / "tiny_mc.json"
    assert f"wrote {path}" in err.replace("\n", "")
    record = json.loads(path.read_text())
    acc = record["lm_eval"]["results"]["tiny_mc"]["acc,none"]
    assert f"tiny_mc/acc: {acc:.4f}" in out.splitlines()
    assert record["run"] == "quickstart" and record["chat_template"] is False and record["limit"] == 3
    assert record["lm_eval"]["n-samples"]["tiny_mc"]["effective"] == 3
    # the same 3 items through the Python call give the same accuracy
    lm = lm_eval_run.from_run(run_dir, batch_size=3, show_progress=False)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    again = lm_eval.simple_evaluate(model=lm, tasks=["tiny_mc"], task_manager=manager, limit=3)
    assert again["results"]["tiny_mc"]["acc,none"] == acc
    lm.model.detach()
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.parent.name != "lm_eval"}
    assert {p: b for p, b in after.items() if p.name != ".lock"} == {p: b for p, b in before.items()}
    assert sorted(p.name for p in (run_dir / "lm_eval").iterdir()) == ["tiny_mc.json"]


def test_cli_unknown_task_names_close_matches(tiny_dir, task_dir, tmp_path, capsys):
    run_dir = write_run(tiny_dir, tmp_path)
    argv = ["lm-eval", str(run_dir), "--tasks", "tiny_mcc", "--include-path", str(task_dir), "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "lm-eval has no task tiny_mcc" in err and "did you mean tiny_mc" in err
    assert not (run_dir / "lm_eval").exists()


def test_cli_second_call_writes_a_new_file(tiny_dir, task_dir, tmp_path, capsys):
    """Never replaces an earlier result: tiny_mc.json, then tiny_mc-2.json, as reftx eval's eval-2.json."""
    run_dir = write_run(tiny_dir, tmp_path)
    argv = ["lm-eval", str(run_dir), "--tasks", "tiny_mc", "--include-path", str(task_dir), "--batch-size", "2",
            "--no-chat-template", "--no-progress"]
    assert cli.main([*argv, "--limit", "2"]) == 0
    first = (run_dir / "lm_eval" / "tiny_mc.json").read_bytes()
    capsys.readouterr()
    assert cli.main([*argv, "--limit", "3"]) == 0
    assert f"wrote {run_dir / 'lm_eval' / 'tiny_mc-2.json'}" in capsys.readouterr().err.replace("\n", "")
    assert sorted(p.name for p in (run_dir / "lm_eval").iterdir()) == ["tiny_mc-2.json", "tiny_mc.json"]
    assert (run_dir / "lm_eval" / "tiny_mc.json").read_bytes() == first
    records = [json.loads((run_dir / "lm_eval" / n).read_text()) for n in ("tiny_mc.json", "tiny_mc-2.json")]
    assert [r["limit"] for r in records] == [2, 3]
    assert [r["lm_eval"]["n-samples"]["tiny_mc"]["effective"] for r in records] == [2, 3]


def test_cli_mistyped_run_path_creates_nothing(task_dir, tmp_path, capsys):
    bad = tmp_path / "runs" / "quickstrat"
    argv = ["lm-eval", str(bad), "--tasks", "tiny_mc", "--include-path", str(task_dir), "--no-progress"]
    assert cli.main(argv) == 2
    fix = "give the folder `reftx run` printed (it holds config.yaml)"
    assert capsys.readouterr().err.replace("\n", "") == f"error: no run folder at {bad}; {fix}"
    assert list(tmp_path.iterdir()) == []  # no folder tree, no .lock
    (tmp_path / "runs").mkdir()  # the parent of a run folder: not one either
    assert cli.main(["lm-eval", str(tmp_path / "runs"), *argv[2:]]) == 2
    assert "holds no config.yaml, so it is not a run folder" in capsys.readouterr().err.replace("\n", "")
    assert list((tmp_path / "runs").iterdir()) == []
    with pytest.raises(ReftError, match=rf"^no run folder at {bad}; give the folder `reftx run` printed"):
        lm_eval_run.from_run(bad)


def test_lm_eval_is_optional(tmp_path, monkeypatch):
    """Importing reftx (and this adapter, and the CLI) imports no lm_eval; without it, a clear error."""
    code = "import sys, reftx, reftx.cli, reftx.recipes.lm_eval; print('lm_eval' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=REPO).stdout.strip() == "False"
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", None)  # import fails as if not installed
    with pytest.raises(ReftError, match=r"pip install 'reftx\[lm-eval\]'"):
        lm_eval_run.from_run(tmp_path)
