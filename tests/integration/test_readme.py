"""Every fenced block of README.md, run as the README shows it (issue 31, point 8).

A handler claims each block by a text only that block holds; test_every_block_has_one_handler fails
on a block no handler claims, so the README cannot grow an untested example. How blocks run
(tests/integration/readme_env.py):

* python: verbatim (``exec`` of the block's text) in a tmp working folder. ``load_model("default")``
  loads a random 30-layer llama (hidden 32) with SmolLM2's tokenizer through a patched
  ``reftx.models.loading.default_model_path``, so the code text is unchanged and every layer index
  and fraction resolves as on SmolLM2-135M. The first example also runs on the default model (slow);
  the TRL examples do in tests/integration/test_trl.py (slow).
* bash: one command a line. ``reftx ...`` runs through ``reftx.cli.commands.main`` with a short
  budget appended where it trains (Comparing methods: readme_compare.py); a command that needs the
  network prints its one-line offline error; ``bash scripts/*.sh`` are checked against what CI runs, not run (they build a .venv);
  ``python scripts/...`` runs on the run folder the block's earlier line wrote.
* yaml: experiment blocks load strictly (``extends:`` a tmp base.yaml); lm-eval's run with its command.
"""
from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reftx
import reftx.cli.commands as cli
from reftx.core.intervention import INTERVENTIONS
from reftx.models import loading
from tests.integration import readme_compare, readme_serve  # noqa: F401 (register their handlers)
from tests.integration.readme_env import (HANDLERS, QUICKSTART, REPO, SHORT, Env, claimed, commands, errors, handles,
                                          lm_eval_index_once, python, readme_blocks, same_weights, write_tiny30)


@pytest.fixture(scope="module")
def tiny30(tmp_path_factory) -> Path:
    return write_tiny30(tmp_path_factory.mktemp("tiny30"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished(tiny30, tmp_path_factory) -> Path:
    """A finished run of experiments/quickstart.yaml on the tiny model (what runs/quickstart holds)."""
    out = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "default_model_path", lambda rebuild=False: tiny30)
        assert cli.main(["run", str(QUICKSTART), *SHORT, f"output_dir={out}", "--no-progress"]) == 0
    return out / "quickstart"


@pytest.fixture(scope="module")
def lm_eval_index():
    with lm_eval_index_once():
        yield


@pytest.fixture
def env(tiny30, tmp_path, monkeypatch, capsys, request):
    return Env(tmp_path, monkeypatch, capsys, request, tiny30)


# -- the first example: attach, train, generate, plan, save, load ------------------------------------------
@handles(("python", 'reftx.load_model("default")'))
def first_example(env: Env, code: str):
    torch.manual_seed(0)
    ns = python(code, "first example")
    model, again, ids, mask, labels = (ns[k] for k in ("model", "again", "ids", "mask", "labels"))
    out = env.capsys.readouterr().out
    assert sorted(p.name for p in (env.root / "runs" / "my-edit").iterdir()) == ["interventions.safetensors",
                                                                                "reft_config.json"]
    assert [g.key for g in again.plan(show=False)] == ["L2.block_output.first+last", "L5.block_output.first+last"]
    assert same_weights(model, again)
    params = re.search(r"# (trainable params: .*)", code).group(1)
    printed = next(ln for ln in out.splitlines() if ln.startswith("trainable params:"))
    if env.real:  # the comment's numbers are the default model's
        assert printed == params
    else:
        assert printed.startswith(f"trainable params: {again.count_parameters():,} || all params: ")
    assert "L2.block_output.first+last" in out  # plan() printed its table
    with torch.no_grad():
        trained = again(input_ids=ids, attention_mask=mask, labels=labels).loss
        with again.disabled():
            frozen = again(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert trained < (0.5 if env.real else 1.0) * frozen  # ten steps learned (on the default model: the answer)
    again.detach()


# -- Many adapters in one batch (a fragment: the names it uses come from the text around it) ------------
FRAGMENT = """
import reftx
from reftx.data.pairs import prompt_batch
from reftx.eval.scoring import score_continuations

base, tok = reftx.load_model("default")
prompts, continuations = ["Where is the treasure?", "Name a color.", "Greet me."], [" Under the oak.", " Blue.", " Ahoy!"]
batch = prompt_batch(tok, prompts)
ids, mask = batch["input_ids"], batch["attention_mask"]
"""


@handles(("python", "reftx.MultiReft.from_pretrained("))
def multi_adapters(env: Env, code: str):
    from reftx.testing.tiny import perturb

    env.copy_run("x")  # a run folder
    base = reftx.load_model("default")[0]
    other = perturb(reftx.attach(base, [{"kind": "direft", "rank": 2, "layers": [5], "positions": {"last": 2}}]))
    other.save_pretrained(env.root / "runs" / "y" / "intervention")
    other.detach()
    ns = python(FRAGMENT + code, "MultiReft")
    base, ids, mask, logits = ns["multi"].detach(), ns["ids"], ns["mask"], ns["out"].logits
    assert ns["new"].shape[0] == 3 and len(ns["scores"]) == 3
    with torch.no_grad():
        assert torch.allclose(logits[1], base(input_ids=ids, attention_mask=mask).logits[1], atol=1e-6)  # None: the base
        for row, folder in ((0, "runs/x/intervention"), (2, "runs/y/intervention")):
            alone = reftx.ReftModel.from_pretrained(base, folder)
            assert torch.allclose(logits[row], alone(input_ids=ids, attention_mask=mask).logits[row], atol=1e-5)
            alone.detach()


# -- Training with TRL (three examples) ----------------------------------------------------------------
def trl_example(env: Env, code: str, label: str) -> tuple[dict, bool, int]:
    """Run a TRL block; (its namespace, whether the interventions changed, how often ReftModel.generate ran)."""
    pytest.importorskip("trl")
    initial, generated = {}, []
    attach, generate = reftx.attach, reftx.ReftModel.generate

    def spy_attach(*args, **kwargs):
        reft = attach(*args, **kwargs)
        initial.update({n: p.detach().clone() for n, p in reft.interventions.named_parameters()})
        return reft

    def spy_generate(self, *args, **kwargs):
        generated.append(1)
        return generate(self, *args, **kwargs)

    env.monkeypatch.setattr(reftx, "attach", spy_attach)
    env.monkeypatch.setattr(reftx.ReftModel, "generate", spy_generate)
    ns = python(code, label)
    after = dict(ns["reft"].interventions.named_parameters())
    return ns, any(not torch.equal(after[n], p) for n, p in initial.items()), len(generated)


@handles(("python", "ReftSFTTrainer(reft"))
def trl_sft(env: Env, code: str):
    ns, changed, _ = trl_example(env, code, "TRL SFT")
    assert changed
    saved = env.root / "runs" / "trl-sft" / "intervention"
    assert sorted(p.name for p in saved.iterdir()) == ["interventions.safetensors", "reft_config.json"]
    reft = ns["reft"]
    assert same_weights(reft, reftx.ReftModel.from_pretrained(reft.detach(), saved))


@handles(("python", "ReftDPOTrainer(reft"))
def trl_dpo(env: Env, code: str):
    assert trl_example(env, code, "TRL DPO")[1]


@handles(("python", "ReftGRPOTrainer(reft"))
def trl_grpo(env: Env, code: str):
    assert trl_example(env, code, "TRL GRPO")[2] > 0  # sampled through the exact generate


# -- lm-evaluation-harness -----------------------------------------------------------------------------
ITEMS = [{"question": q, "choices": ["blue", "white", "green", "red"], "answer": i % 4} for i, q in enumerate(
    ["Is the sky blue?", "What colour is fresh snow?", "Grass?", "A ripe tomato?", "The sea?"])]


@handles(("bash", "reftx lm-eval runs/quickstart"), ("yaml", "task: my_task"))
def lm_eval_commands(env: Env, block: str, task_yaml: str):
    env.request.getfixturevalue("lm_eval_index")
    online, offline = commands(block)
    run_dir = env.copy_run()
    rc, _, err = env.reftx(online)
    assert rc == 2 and errors(err) == (
        "error: lm-eval task arc_easy: its dataset is not in the local datasets cache and offline mode is on "
        "(HF_DATASETS_OFFLINE or HF_HUB_OFFLINE) (ConnectionError: Couldn't reach 'allenai/ai2_arc' on the Hub "
        "(OfflineModeIsEnabled)); unset them and run it once online to cache it, or give a local task YAML with "
        "--include-path DIR",)
    assert not (run_dir / "lm_eval").exists()
    (env.root / "my_tasks").mkdir()
    (env.root / "my_tasks" / "my_task.yaml").write_text(task_yaml)
    (env.root / "my_tasks" / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
    rc, tail, _ = env.reftx(offline)
    assert rc == 0, tail
    record = json.loads((run_dir / "lm_eval" / "my_task.json").read_text())["lm_eval"]
    assert record["n-samples"]["my_task"]["effective"] == len(ITEMS)
    assert f"my_task/acc: {record['results']['my_task']['acc,none']:.4f}" in tail.splitlines()


@handles(("python", "lm_eval.simple_evaluate("))
def lm_eval_python(env: Env, code: str):
    env.request.getfixturevalue("lm_eval_index")
    env.copy_run()
    with pytest.raises(ConnectionError, match=r"Couldn't reach 'allenai/ai2_arc' on the Hub \(OfflineModeIsEnabled\)"):
        python(code, "lm-eval from Python")  # from_run built the model; arc_easy needs the network once


# -- Experiments (YAML) ---------------------------------------------------------------------------------
@handles(("python", 'reftx.run("experiments/quickstart.yaml"'))
def run_from_python(env: Env, code: str):
    from reftx.core.convert import apply_overrides, dump_yaml, load_yaml

    (env.root / "experiments").mkdir()  # the shipped quickstart with the short budget
    (env.root / "experiments" / "quickstart.yaml").write_text(dump_yaml(apply_overrides(load_yaml(QUICKSTART), SHORT)))
    ns = python(code, "reftx.run")
    res, out = ns["res"], env.capsys.readouterr().out
    assert Path(res["run_dir"]).resolve() == env.root / "runs" / "quickstart"
    assert list(res["metrics"]) == ["persona_open", "persona_close", "distinct_2"]
    assert f"{res['metrics']} {res['run_dir']}" in out
    saved = load_yaml(env.root / "runs" / "quickstart" / "config.yaml")
    assert (saved["seed"], saved["train"]["lr"]) == (1, 3e-3)


@handles(("yaml", "extends: base.yaml"))
def experiment_yaml(env: Env, code: str):
    from reftx.config.schema import load_experiment
    from reftx.recipes import registry as recipes

    (env.root / "base.yaml").write_text("schema: 1\nname: from-base\nseed: 3\n"
                                        "interventions: [{kind: direft}, {kind: loreft}]\n"
                                        "train: {max_steps: 5, lr: 1.0e-3}\neval: {batch_size: 4}\n")
    (env.root / "exp.yaml").write_text(code)
    exp = load_experiment(env.root / "exp.yaml", [])
    assert (exp.name, exp.seed, exp.train.max_steps, exp.train.lr, exp.train.epochs) == ("from-base", 3, 5, 4e-3, 8)
    assert (exp.eval.batch_size, exp.eval.max_new_tokens, exp.task.name) == (4, 40, "persona")  # merged key by key
    assert [s["kind"] for s in exp.interventions] == ["loreft"]  # lists replace
    assert [g.key for g in recipes.validate(exp)] == [f"L{n}.block_output.first+last" for n in (8, 15, 23)]


@handles(("bash", "train.eval_every=10"))
def dev_split(env: Env, block: str):
    (line,) = commands(block)
    env.link_experiments()
    assert env.reftx(line, *SHORT, "train.max_steps=10", "train.batch_size=2")[0] == 0
    run_dir = env.root / "runs" / "quickstart"
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in rows if "dev/loss" in r]
    assert [r["step"] for r in dev] == [10] and "dev/persona_open" in dev[0]
    best = json.loads((run_dir / "results.json").read_text())["train"]["best"]
    assert (best["step"], best["metric"]) == (10, "dev/persona_open")


# -- Task zoo: editing, baseline, TOFU stage 1 and its re-scoring --------------------------------------
def tofu_stage1(env: Env, run: str, rescore: str):
    """TOFU stage 1 writes a merged HF checkpoint; tofu_rescore.py re-scores its saved answers (same scorer, same value)."""
    from transformers import AutoModelForCausalLM

    assert env.reftx(run, "lora.max_steps=2", "task.n_eval=2", "eval.max_new_tokens=3")[0] == 0
    run_dir = env.root / "runs" / "tofu_finetune"
    assert AutoModelForCausalLM.from_pretrained(run_dir / "model").config.num_hidden_layers == 30
    assert rescore == "python scripts/tofu_rescore.py runs/<tofu run>"  # <tofu run>: a placeholder for the folder
    assert runpy.run_path(str(REPO / "scripts" / "tofu_rescore.py"), run_name="rescore")["main"]([str(run_dir)]) == 0
    results = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert json.loads((run_dir / "rescored.json").read_text())["metrics"]["rougeL_recall"] == results["rougeL_recall"]


@handles(("bash", "reftx edit --prompt"))
def zoo_commands(env: Env, block: str):
    edit, one_fact, baseline, tofu, rescore = commands(block)
    env.link_experiments()
    assert env.reftx(edit, "task.n_eval=2", "train.max_steps=2", "recipe.checkpoints=[2]",
                     "recipe.locality_prompts=2")[0] == 0
    edited = env.root / "runs" / "counterfact_baft-sequential"
    assert len((edited / "edits.jsonl").read_text().splitlines()) == 2
    assert {"reliability@2", "generality@2", "locality@2"} <= set(json.loads((edited / "results.json").read_text())["metrics"])
    rc, out, err = env.reftx(one_fact, "--steps", "2", "--max-new-tokens", "3")
    assert rc == 0 and re.search(r"^reliability \d\.\d\d, locality \d\.\d\d$", out + err, re.M)
    assert env.reftx(baseline, "task.n_eval=4")[0] == 0
    base = json.loads((env.root / "runs" / "boolq_loreft" / "baseline" / "results.json").read_text())
    assert (base["n_eval"], set(base["metrics"])) == (4, {"accuracy", "accuracy_pyreft"})
    tofu_stage1(env, tofu, rescore)


# -- Adding a primitive ---------------------------------------------------------------------------------
@handles(("python", 'register_primitive("my_loreft"'))
def primitive_snippet(env: Env, code: str):
    """The snippet registers my_loreft; "methods/loreft.py under another name": the same weights give the same logits."""
    from reftx.testing.tiny import batch, tiny_model

    base, (ids, mask) = tiny_model("llama"), batch()
    spec = {"rank": 4, "layers": [1, 2], "positions": {"first": 2, "last": 2}}
    try:
        python(code, "adding a primitive")
        logits = {}
        for kind in ("my_loreft", "loreft"):
            torch.manual_seed(0)
            model = reftx.attach(base, [{"kind": kind, **spec}])
            logits[kind] = model(input_ids=ids, attention_mask=mask).logits
            model.detach()
        assert torch.equal(logits["my_loreft"], logits["loreft"])
        assert not torch.equal(logits["loreft"], base(input_ids=ids, attention_mask=mask).logits)  # it edits
    finally:
        INTERVENTIONS._items.pop("my_loreft", None)


# -- Sharing on the Hub (offline: nothing is uploaded or downloaded) ------------------------------------
PUSH_OFFLINE = "push: HF_HUB_OFFLINE=1 is set; unset it to push to Hub repo 'your-name/quickstart-loreft', or "


@handles(("bash", "reftx push runs/quickstart"))
def push_command(env: Env, block: str):
    (line,) = commands(block)
    run_dir = env.copy_run()
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    rc, _, err = env.reftx(line)
    assert rc == 2 and errors(err) == (f"error: {PUSH_OFFLINE}push later (nothing was uploaded; runs/quickstart is unchanged)",)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@handles(("python", "model.push_to_hub("))
def push_python(env: Env, code: str):
    env.copy_run()
    push, load = code.rsplit("\n\n", 1)  # two cells: push a trained run, then load it from the Hub
    ns = {"__name__": "__main__"}
    with pytest.raises(reftx.ReftError, match=re.escape(PUSH_OFFLINE)):
        python(push, "push_to_hub", ns)
    with pytest.raises(reftx.ReftError, match=r"'your-name/quickstart-loreft' is not in the Hugging Face cache .* "
                                              r"while HF_HUB_OFFLINE=1 is set"):
        python(load, "from the Hub", ns)


# -- Trackers -------------------------------------------------------------------------------------------
@handles(("bash", "tensorboard --logdir"))
def tensorboard_commands(env: Env, block: str):
    pytest.importorskip("tensorboard")
    run, board = commands(block)
    env.link_experiments()
    assert env.reftx(run, *SHORT, "train.log_every=1")[0] == 0
    argv = shlex.split(board)  # serving is left out: --inspect prints what it would show, and exits
    done = subprocess.run([str(Path(sys.executable).parent / argv[0]), *argv[1:], "--inspect"], capture_output=True,
                          text=True, timeout=300, cwd=env.root)
    assert done.returncode == 0, done.stderr
    tags = done.stdout.split("These tags are in runs/quickstart/trackers/quickstart:\n", 1)[1].split("=" * 70)[0]
    assert {"loss", "lr"} <= set(re.findall(r"^   (\S+)$", tags, re.M))
    assert re.search(r"^   last_step +2$", done.stdout, re.M)  # train.max_steps=2 of the budget


# -- On a fresh machine: the two commands (not run here: they build .venv) ------------------------------
def ci_scripts() -> set[str]:
    """Every `bash scripts/...` command CI reaches: .ci/run's, and theirs in turn."""
    todo, seen = [(REPO / ".ci" / "run").read_text()], set()
    while todo:
        for cmd in re.findall(r"^(?:exec )?(bash scripts/\S+)", todo.pop(), re.M):
            if cmd not in seen:
                seen.add(cmd)
                todo.append((REPO / cmd.split()[1]).read_text())
    return seen


@handles(("bash", "bash scripts/quickstart.sh"))
def fresh_machine(env: Env, block: str):
    from reftx.config.schema import load_experiment

    assert commands(block) == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    ci = ci_scripts()
    assert "bash scripts/test.sh" in ci  # CI runs the README's test command
    for line in commands(block):
        script = REPO / line.split()[1]
        assert script.is_file() and os.access(script, os.X_OK), script
        assert set(re.findall(r"^(?:exec )?(bash scripts/\S+)", script.read_text(), re.M)) <= ci  # set up as CI is
    quick = (REPO / "scripts" / "quickstart.sh").read_text()
    assert re.search(r'^exec \.venv/bin/reftx run experiments/quickstart\.yaml "\$@"$', quick, re.M)
    assert load_experiment(QUICKSTART, []).name == "quickstart"  # the experiment this module's runs train


# -- the tests ------------------------------------------------------------------------------------------
def test_every_block_has_one_handler():
    for lang, code, line in readme_blocks():
        owners = [n for n, (claims, _) in HANDLERS.items() if any(lang == want and m in code for want, m in claims)]
        assert len(owners) == 1, (f"README.md:{line}: a {lang} block claimed by {owners or 'no handler'}; "
                                  "give it one handler in tests/integration/test_readme.py")
    for name in HANDLERS:
        claimed(name)


@pytest.mark.parametrize("name", list(HANDLERS))
def test_the_readme_block_runs(name, env):
    claims, run = HANDLERS[name]
    run(env, *claimed(name))


@pytest.mark.slow
def test_the_first_example_on_the_default_model(tmp_path, monkeypatch, capsys, request):
    """The README's first example as written on SmolLM2-135M: it learns the answer, prints the counts its comment gives."""
    first_example(Env(tmp_path, monkeypatch, capsys, request, None), *claimed("first_example"))
