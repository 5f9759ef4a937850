"""Knowledge editing: loaders on the real files, metric functions on hand-made cases, the edit bank,
and the editing loop end to end on a tiny model (parallel single edits == one at a time)."""
from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import reftx
import reftx.tasks  # noqa: F401
import reftx.cli.commands as cli
from reftx.parts.slot_bank import row_rank
from reftx.recipes.edit.engine import EditOptions, Editor, bank_spec, subject_position
from reftx.core.errors import ConfigError, DataError
from reftx.config.schema import TrainConfig
from reftx.models.loading import default_model_path
from reftx.core.intervention import Context, make_intervention
from reftx.data.examples import Example
from reftx.eval.task import default_data_dir, get_task
from reftx.tasks.knowledge_edit import (argmax_agreement, edit_scores, read_edits, read_known, summarize,
                                        unedited_argmax)
from tests.conftest import tiny_config
from tests.integration.test_runner import REPO

DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "counterfact").is_dir(), reason="shared data absent")


# -- loaders ------------------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("dataset, file, count", [
    ("counterfact", None, 10000), ("counterfact", "counterfact/counterfact-edit-1k.json", 1000),
    ("counterfact", "counterfact/counterfact-train.json", 10000),
    ("counterfact", "counterfact/counterfact-val.json", 1919),
    ("zsre", None, 998),  # 1000 records, 2 with an empty alt (no edit asked)
])
def test_loaders_on_the_real_files(dataset, file, count):
    task = get_task("knowledge_edit", {"dataset": dataset, "file": file})
    assert len(task.load("edit")) == count


@needs_data
def test_first_records():
    cf = get_task("knowledge_edit", {"dataset": "counterfact"}).load("edit")[0]
    assert (cf.prompt, cf.target) == ("The mother tongue of Danielle Darrieux is", " English")
    assert cf.meta["rephrase"] == "Where Danielle Darrieux is from, people speak the language of"
    assert (cf.meta["locality_prompt"], cf.meta["locality_answer"]) == ("Michel Rocard is a native speaker of", " French")
    zs = get_task("knowledge_edit", {"dataset": "zsre"})
    first = zs.load("edit")[0]
    assert (first.prompt, first.target, first.meta["subject"]) == ("What is the product made by UniFirst?",
                                                                   " unmanned aircraft", "UniFirst")
    assert first.meta["locality_answer"] == " Walter Sobchak"
    assert [e.meta["index"] for e in zs.load("edit")][533:536] == [533, 535, 536]  # record 534 skipped
    known = zs.known()
    assert len(known) == 1209 and known[0].prompt == "Vinson Massif is located in the continent of"


def test_malformed_files_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_edits(tmp_path / "none.json", "zsre")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"src": "q", "alt": "a"}]')
    with pytest.raises(DataError, match=r"bad.json \(record 0\): missing.*rephrase, loc, loc_ans, subject"):
        read_edits(bad, "zsre")
    bad.write_text('{"prompt": 1}')
    with pytest.raises(DataError, match="expected a JSON array"):
        read_known(bad)
    bad.write_text('[\n{"prompt": "x",\n')
    with pytest.raises(DataError, match=r"bad.json:3: invalid JSON"):
        read_known(bad)


# -- metrics ------------------------------------------------------------------------------------
def test_argmax_agreement_and_means():
    assert argmax_agreement((5, 6, 7), (5, 9, 7)) == pytest.approx(2 / 3)
    assert argmax_agreement((1,), (1,)) == 1.0
    with pytest.raises(ValueError):
        argmax_agreement((1, 2), (1,))
    rows = [{"reliability": 1.0, "generality": 0.5, "locality": 0.25},
            {"reliability": 0.5, "generality": 0.0, "locality": 1.0}]
    assert summarize(rows) == {"reliability": 0.75, "generality": 0.25, "locality": 0.625}


def test_known_accuracy_is_token_accuracy(tiny_dir):
    from reftx.eval.scoring import score_continuations
    from reftx.tasks.knowledge_edit import KnownFact, known_accuracy

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir).eval(), AutoTokenizer.from_pretrained(tiny_dir)
    facts = [KnownFact("Paris", "Paris is the capital of", "France"), KnownFact("Rome", "Rome is in", "Italy")]
    ref = score_continuations(model, tok, ["Paris is the capital of", "Rome is in"], [" France", " Italy"])
    assert known_accuracy(model, tok, facts) == [s.token_accuracy for s in ref]


def test_subject_position_with_the_real_tokenizer():
    tok = AutoTokenizer.from_pretrained(default_model_path())
    prompt = "The mother tongue of Danielle Darrieux is"
    pos, found = subject_position(tok, prompt, "Danielle Darrieux", chat=False)
    ids = tok(prompt)["input_ids"]
    assert found and tok.decode(ids[: pos + 1]) == "The mother tongue of Danielle Darrieux"
    assert subject_position(tok, prompt, "Paris", chat=False) == (len(ids) - 1, False)  # fallback: last token


# -- the bank -----------------------------------------------------------------------------------
def test_row_rank():
    assert row_rank(torch.tensor([0, 0, 0, 1, 1, 3])).tolist() == [0, 1, 2, 0, 1, 0]


def test_bank_routes_rows_to_their_slot():
    torch.manual_seed(0)
    bank = make_intervention("slot_bank", {"inner": "loreft", "slots": 2, "options": {"rank": 2}}, 6)
    with torch.no_grad():
        for p in bank.parameters():
            p.add_(torch.randn_like(p))
    h, bi = torch.randn(5, 6), torch.tensor([0, 0, 1, 1, 2])
    info = {"edit_slot": torch.tensor([1.0, 0.0, 1.0])}
    out = bank(h, Context(bi, 3, example_info=info))
    ctx = Context(bi, 3)
    torch.testing.assert_close(out[[0, 1, 4]], bank.slots[1](h[[0, 1, 4]], ctx), rtol=0, atol=0)
    torch.testing.assert_close(out[[2, 3]], bank.slots[0](h[[2, 3]], ctx), rtol=0, atol=0)
    # edit_pos: only the row at that prompt index is edited (-1: all of them)
    out = bank(h, Context(bi, 3, example_info={**info, "edit_pos": torch.tensor([1.0, -1.0, 0.0])}))
    assert torch.equal(out[0], h[0]) and not torch.equal(out[1], h[1])
    torch.testing.assert_close(out[[2, 3]], bank.slots[0](h[[2, 3]], ctx), rtol=0, atol=0)
    assert not torch.equal(out[4], h[4])


def test_bank_spec_and_reset_are_deterministic():
    spec = bank_spec({"kind": "baft", "rank": 4, "layers": [3], "positions": "all_prompt", "balance_weight": 0.1}, 8)
    assert spec == {"layers": [3], "positions": "all_prompt", "kind": "slot_bank", "inner": "baft", "slots": 8,
                    "options": {"rank": 4, "balance_weight": 0.1}}
    bank = make_intervention("slot_bank", {"inner": "loreft", "slots": 2, "options": {"rank": 2}}, 6)
    bank.reset(0, 7)
    bank.reset(1, 7)
    for a, b in zip(bank.slots[0].parameters(), bank.slots[1].parameters()):
        assert torch.equal(a, b)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="checkpoints"):
        EditOptions(checkpoints=[50, 10])
    with pytest.raises(ConfigError, match="parallel"):
        EditOptions(parallel=0)


# -- end to end on a tiny model -----------------------------------------------------------------
# single-token targets: a 32-wide random model cannot route a second target token through attention
FACTS = [("The capital city of Norway is", " Lima", "Norway's capital is", "The sky is", " blue"),
         ("The painter of the Mona Lisa is", " Picasso", "The Mona Lisa was painted by", "Cats like", " milk"),
         ("The tallest mountain on Earth is", " Everest", "Earth's highest peak is", "France's capital is", " Paris")]


def examples():
    return [Example(p, t, meta={"subject": s, "rephrase": r, "locality_prompt": lp, "locality_answer": la})
            for (p, t, r, lp, la), s in zip(FACTS, ("Norway", "Mona Lisa", "Earth"))]


def editor(tiny_dir, slots, kind="loreft", opts=None, lr=2e-2, steps=60, fast=True, **spec):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        base.lm_head.weight.mul_(100)  # a random head caps the logits near 0.6: make targets learnable
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = reftx.attach(base, [bank_spec({"kind": kind, "rank": 4, "layers": [1], "positions": "all_prompt",
                                           **spec}, slots)])
    return Editor(model, tok, examples(), opts or EditOptions(), TrainConfig(lr=lr, max_steps=steps, max_grad_norm=1.0),
                  False, seed=3, known_prompts=[("Paris is in", "Paris"), ("Rome is in", "Rome")], fast=fast)


def test_one_fact_reaches_reliability_one_with_locality_measured(tiny_dir):
    ed = editor(tiny_dir, 1)
    unedited = edit_scores(ed.model, ed.tok, ed.examples[:1], False)[0]
    assert unedited["reliability"] < 1.0
    res = ed.train_jobs([[0]])[0]
    assert res.loss < 0.01 and 1 <= res.steps < 60
    scores = ed.evaluate_jobs([[0]], [res], dict(enumerate(unedited_argmax(ed.model, ed.tok, ed.examples, False))))
    assert scores[0]["reliability"] == 1.0
    assert 0.0 <= scores[0]["locality"] <= 1.0 and set(scores[0]) == {"reliability", "generality", "locality"}


def test_parallel_single_edits_equal_one_at_a_time(tiny_dir):
    """Three edits side by side in one bank == each trained alone (same steps, same weights, up to
    float reduction order: batched matmuls sum in a different order with more threads)."""
    jobs = [[0], [1], [2]]
    together = editor(tiny_dir, 3, steps=8).train_jobs(jobs)
    alone = editor(tiny_dir, 1, steps=8).train_jobs(jobs)
    for a, b in zip(together, alone):
        assert a.steps == b.steps
        for k in a.state:
            torch.testing.assert_close(a.state[k], b.state[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("subject", [False, True])
def test_upper_layer_path_equals_the_full_forward(tiny_dir, subject):
    opts = EditOptions(subject_positions=subject)
    fast, slow = editor(tiny_dir, 3, steps=4, opts=opts), editor(tiny_dir, 3, steps=4, fast=False, opts=opts)
    assert fast.fast and not slow.fast
    assert fast.pos == ([subject_position(fast.tok, ex.prompt, ex.meta["subject"], False)[0] for ex in examples()]
                        if subject else [-1, -1, -1])
    for a, b in zip(fast.train_jobs([[0, 1], [2]]), slow.train_jobs([[0, 1], [2]])):
        assert a.steps == b.steps and a.loss == pytest.approx(b.loss, rel=1e-5)
        for k in a.state:
            torch.testing.assert_close(a.state[k], b.state[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma3_text", "gpt2"])
def test_replayed_site_equals_the_full_forward_on_every_architecture(tiny_dir, model_type):
    """The upper-layer path (reftx.engine.hooks.replay_site) is an option of the one loop for any
    architecture the sites table describes: same steps, loss and weights as the full forward,
    at a middle layer and with a position schedule other than all_prompt."""
    tok = AutoTokenizer.from_pretrained(tiny_dir)

    def make(fast):
        cfg = tiny_config(model_type)
        cfg.vocab_size = len(tok)
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():
            base.get_output_embeddings().weight.mul_(100)
        model = reftx.attach(base, [bank_spec({"kind": "loreft", "rank": 4, "layers": [2],
                                               "positions": {"first": 1, "last": 2},
                                               "tie": "positions"}, 2)])
        return Editor(model, tok, examples(), EditOptions(), TrainConfig(lr=2e-2, max_steps=4, max_grad_norm=1.0),
                      False, seed=3, fast=fast)

    fast, slow = make(True), make(False)
    assert fast.fast and not slow.fast
    a_res, b_res = fast.train_jobs([[0, 1], [2]]), slow.train_jobs([[0, 1], [2]])
    assert [r.steps for r in a_res] == [4, 4]
    for a, b in zip(a_res, b_res):
        assert a.steps == b.steps and a.loss == pytest.approx(b.loss, rel=1e-5)
        for k in a.state:
            torch.testing.assert_close(a.state[k], b.state[k], rtol=1e-4, atol=1e-5)
    # the replay leaves the model as it was: a full forward after it equals one before it
    assert all("forward" not in m.__dict__ for m in fast.model.base.modules())


def test_baft_site_state_losses_on_a_fresh_gate(tiny_dir):
    # a fresh sigmoid gate is 0.9 everywhere: locality loss = weight · 0.9, sequence variance = 0
    opts = EditOptions(mode="sequential", locality_prompts=2, sequence_balance_weight=1.0)
    ed = editor(tiny_dir, 1, kind="baft", opts=opts, locality_weight=2.0)
    assert ed.pool.shape[0] == len(ed.tok("Paris is in")["input_ids"]) + len(ed.tok("Rome is in")["input_ids"])
    ed.seq_states = ed.site_states([ed.examples[0].prompt], [-1])
    assert ed._extra(0).item() == pytest.approx(2.0 * 0.9, abs=1e-6)
    # with locality_margin m the pull is on the excess over m: 2 · (0.9 − 0.5); none once under m
    for margin, expected in ((0.5, 2.0 * 0.4), (0.95, 0.0)):
        ed = editor(tiny_dir, 1, kind="baft", opts=opts, locality_weight=2.0, locality_margin=margin)
        ed.seq_states = ed.site_states([ed.examples[0].prompt], [-1])
        assert ed._extra(0).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ConfigError, match="basis-gated"):
        editor(tiny_dir, 1, kind="loreft", opts=EditOptions(locality_prompts=2))


def _kl_by_hand(ed, slot, prompt):
    """KL(unedited || edited) of the next-token distribution after ``prompt``, slot ``slot`` applied."""
    ids = torch.tensor([ed.tok(prompt)["input_ids"]])
    info = {"edit_slot": torch.tensor([float(slot)]), "locality": torch.tensor([1.0])}
    with torch.no_grad():
        edited = ed.model(input_ids=ids, attention_mask=torch.ones_like(ids), example_info=info).logits[0, -1]
        with ed.model.disabled():
            ref = ed.model.base(input_ids=ids).logits[0, -1]
    p, q = torch.log_softmax(ref.double(), -1), torch.log_softmax(edited.double(), -1)
    return float((p.exp() * (p - q)).sum())


@pytest.mark.parametrize("fast", [True, False])
def test_locality_kl_term_by_hand(tiny_dir, fast):
    """recipe.locality_kl_weight adds λ · KL(unedited || edited) after the locality prompts, taken in
    turn from the pool, to the slot's loss; the edit rows' NLL is what it is without the term."""
    from reftx.recipes.edit.engine import EditJob

    plain = editor(tiny_dir, 2, fast=fast)
    ed = editor(tiny_dir, 2, fast=fast, opts=EditOptions(locality_prompts=2, locality_kl_weight=3.0, locality_kl_batch=1))
    assert ed.kl_ref.shape == (2, len(ed.tok)) and [r.labels.count(-100) for r in ed.kl_rows] == [
        len(ed.tok(p)["input_ids"]) for p in ("Paris is in", "Rome is in")]
    for e in (plain, ed):
        e.bank.reset(0, 5)
        e.bank.reset(1, 6)
    jobs = [EditJob(e, 0, [0], False, [None], False) for e in (plain, ed)]
    others = [EditJob(e, 1, [1, 2], False, [None], False) for e in (plain, ed)]
    for turn, prompt in enumerate(("Paris is in", "Rome is in", "Paris is in")):  # the pool in turn, then again
        base = plain.step_loss({0: jobs[0].rows(0), 1: others[0].rows(1)})
        rows = {0: jobs[1].rows(0), 1: others[1].rows(1)}
        assert [r.kl for r in rows[0]] == [-1, turn % 2] and [r.kl for r in rows[1]] == [-1, -1, turn % 2]
        got = ed.step_loss(rows)
        for k in (0, 1):
            assert got.stop[k] == pytest.approx(base.stop[k], rel=1e-6)  # the NLL of the edit rows alone
            assert float((got.losses[k] - base.losses[k]).detach()) == pytest.approx(3.0 * _kl_by_hand(ed, k, prompt), rel=1e-4)
    with pytest.raises(ConfigError, match="locality_kl_weight: needs locality_prompts > 0"):
        EditOptions(locality_kl_weight=1.0)


@pytest.mark.parametrize("overrides, message", [
    (["recipe.locality_prompts=4", "interventions.0.layers=[1]"], r"^recipe: locality_prompts \(without locality_kl_weight\) .* not 'loreft'"),
    (["recipe.subject_positions=true", "interventions.0.positions={first: 2}", "interventions.0.layers=[1]"], r"^interventions\.0\.positions: "),
    (["interventions.0.layers=[0, 1]"], r"^interventions\.0\.layers: editing needs one layer, got \[0, 1\]"),
])
def test_validate_refuses_edit_options_the_primitive_cannot_take(tiny_dir, overrides, message):
    """reftx validate (and so reftx sweep, before any cell runs) checks the edit recipe's options
    against the experiment's one intervention, as the Editor would after loading the model."""
    from reftx.config.schema import load_experiment
    from reftx.recipes import registry
    from reftx.recipes.train import model_config_of

    exp = load_experiment(REPO / "experiments/editing/zsre_loreft.yaml", [f"model.name={tiny_dir}", *overrides])
    with pytest.raises(ConfigError, match=message):
        registry.validate(exp, model_config_of(exp))
    ok = load_experiment(REPO / "experiments/editing/zsre_loreft.yaml",
                         [f"model.name={tiny_dir}", "recipe.locality_prompts=4", "recipe.locality_kl_weight=1.0",
                          "interventions.0.layers=[1]"])
    registry.validate(ok, model_config_of(ok))


def test_locality_kl_keeps_an_edit_off_the_locality_prompts(tiny_dir):
    """Trained with the KL term, an edit moves the distribution after the locality prompts less."""
    res, kls = [], []
    for w in (0.0, 10.0):
        ed = editor(tiny_dir, 1, steps=30, opts=EditOptions(locality_prompts=2, locality_kl_weight=w or 1e-12,
                                                            stop_loss=0.0))
        r = ed.train_jobs([[0]])[0]
        ed.bank.slots[0].load_state_dict(r.state)
        kls.append(sum(_kl_by_hand(ed, 0, p) for p in ("Paris is in", "Rome is in")))
        res.append(r)
    assert kls[1] < 0.5 * kls[0] and res[1].loss < 0.5


@pytest.mark.skipif(DATA is None or not (DATA / "zsre").is_dir(), reason="shared data absent")
def test_reftx_edit_sequential_run_and_demo(tiny_dir, tmp_path, capsys):
    args = ["edit", str(REPO / "experiments/editing/zsre_baft.yaml"), f"model.name={tiny_dir}",
            f"output_dir={tmp_path}", "task.n_eval=4", "recipe.mode=sequential", "recipe.checkpoints=[2, 4]",
            "interventions.0.layers=[1]", "train.max_steps=3", "recipe.locality_prompts=2", "--no-progress"]
    assert cli.main(args) == 0
    run = tmp_path / "zsre_baft-sequential"
    res = json.loads((run / "results.json").read_text())
    assert res["n_edits"] == 4 and res["mode"] == "sequential" and len(res["config_hash"]) == 12
    assert {"reliability@2", "generality@2", "locality@4", "reliability_unedited", "steps_mean"} <= set(res["metrics"])
    lines = [json.loads(x) for x in (run / "edits.jsonl").read_text().splitlines()]
    assert [x["after"] for x in lines] == [2, 2, 4, 4, 4, 4] and all(1 <= x["steps"] <= 3 for x in lines)
    progress = (run / "progress.log").read_text().splitlines()  # one timestamped line per trained job
    assert [line.split(" ", 2)[2].split(":")[0] for line in progress] == ["job 0 (1/1 done)"] * 4
    # the same command again: the one run-folder writer picks the next free folder, the first is untouched
    first = (run / "results.json").read_bytes()
    assert cli.main(args) == 0
    assert (run / "results.json").read_bytes() == first
    again = json.loads((tmp_path / "zsre_baft-sequential-2" / "results.json").read_text())
    assert again["metrics"] == res["metrics"] and again["config_hash"] == res["config_hash"]
    assert f"wrote {tmp_path / 'zsre_baft-sequential-2'}" in capsys.readouterr().err.replace("\n", "")
    assert cli.main(["edit", "--model", str(tiny_dir), "--prompt", "The capital of Norway is", "--target", "Lima",
                     "--steps", "2", "--max-new-tokens", "3"]) == 0
    assert "The capital of Norway is" in capsys.readouterr().err
    assert cli.main(["edit"]) == 2


@pytest.mark.parametrize("path", sorted((REPO / "experiments/editing").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_editing_experiments_have_valid_edit_options(path):
    from reftx.config.schema import load_experiment
    from reftx.recipes.registry import recipe_of

    exp = load_experiment(path)
    recipe, opts = recipe_of(exp)
    assert recipe.name == "edit" and isinstance(opts, EditOptions) and opts.mode == "single" and len(exp.interventions) == 1 and exp.model.chat_template is False
    assert exp.train.max_steps == 100 and exp.train.lr == 5e-4 and exp.interventions[0]["rank"] == 4


@pytest.mark.parametrize("bound", ["hinge", "pid", "project"])
def test_edit_honours_every_bound(tiny_dir, bound):
    """`reftx edit` trains through the same modifier terms as `reftx run`: a hinge bound adds
    λ·max(0, ‖b‖ − τ)², PID scales the loss and moves its weight, a projection caps ‖b‖ at τ.
    (The editing loop used to drop the hinge and PID terms silently.)"""
    tau = 0.005
    torch.manual_seed(0)  # slots initialise from the global RNG: fixed here, whatever ran before
    free = editor(tiny_dir, 1, steps=12, fast=True).train_jobs([[0]])[0]
    ed = editor(tiny_dir, 1, steps=12, fast=True, bound=bound, bound_tau=tau, bound_lambda=1e4)
    slot = ed.bank.slots[0]
    res = ed.train_jobs([[0]])[0]
    key = next(k for k in res.state if k.endswith("source.bias"))
    free_norm, norm = free.state[key].norm().item(), res.state[key].norm().item()
    assert free_norm > 10 * tau, free_norm
    if bound == "project":
        assert norm <= tau + 1e-6
    elif bound == "hinge":
        assert norm < 0.5 * free_norm, (norm, free_norm)  # the penalty pulled ‖b‖ back toward τ
    else:
        # the controller ran after every step of the editor and moved its weight below w0 = 0.1
        assert int(slot.bound.pid_steps) == res.steps and float(slot.bound.pid_weight) < 0.1


def test_counterfact_scores_on_the_edited_and_the_unedited_model(tiny_dir):
    """ROME's scores: ``unedited_scores`` (the ReftModel under ``disabled()``) equals a plain copy
    of the base model; after the edit ``edit_scores`` reports the edited model's own values."""
    from reftx.tasks.knowledge_edit import COUNTERFACT_METRICS, unedited_scores

    ed = editor(tiny_dir, 1)
    ed.examples[0] = Example(ed.examples[0].prompt, ed.examples[0].target,
                             meta={**ed.examples[0].meta, "ground_truth": "Oslo"})
    exs = ed.examples[:1]
    before, reference = unedited_scores(ed.model, ed.tok, exs, False)
    plain = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        plain.lm_head.weight.mul_(100)
    assert before[0] == pytest.approx({k: v for k, v in edit_scores(plain, ed.tok, exs, False)[0].items()
                                       if k != "locality"}, abs=1e-5)
    res = ed.train_jobs([[0]])[0]
    after = ed.evaluate_jobs([[0]], [res], {0: reference[0]})[0]
    assert set(COUNTERFACT_METRICS) <= set(after) and after["reliability"] == 1.0
    assert after["efficacy_score"] == 1.0 and after["efficacy_magnitude"] > before[0]["efficacy_magnitude"]


def test_fluency_edited_and_unedited_separately(tiny_dir):
    """recipe.fluency_tokens: ROME's n-gram entropy of the prompt and paraphrase continued greedily,
    unedited with the interventions off, edited with each job's own weights (in slot 0)."""
    from reftx.recipes.edit.run import fluency
    from reftx.eval.generate import generate
    from reftx.config.schema import EvalConfig
    from reftx.tasks.knowledge_edit import n_gram_entropy

    ed = editor(tiny_dir, 2, steps=4)
    exs = examples()[:2]
    ed.examples, ed.encoded, ed.pos = exs, ed.encoded[:2], ed.pos[:2]
    results = ed.train_jobs([[0], [1]])
    out = fluency(ed, exs, results, 4)
    cfg = EvalConfig(batch_size=4, max_new_tokens=4)

    def texts(prompts):
        gen = generate(ed.model, ed.tok, [Example(p) for p in prompts], cfg, False, "t", False)
        return [f"{p} {g}" for p, g in zip(prompts, gen)]

    pairs = [[e.prompt, e.meta["rephrase"]] for e in exs]
    with ed.model.disabled():
        assert out["fluency_unedited"] == pytest.approx(n_gram_entropy(texts(pairs[0] + pairs[1])), abs=1e-9)
    edited = []
    for res, prompts in zip(results, pairs):
        ed.bank.slots[0].load_state_dict(res.state)
        edited += texts(prompts)
    assert out["fluency"] == pytest.approx(n_gram_entropy(edited), abs=1e-9)
    assert out["fluency"] > 0 and out["fluency_unedited"] > 0


def test_demo_locality_rows_count_teacher_forced_agreement(monkeypatch):
    """Per unrelated prompt: the edited vs unedited argmax on the unedited answer, fed token by
    token; (5, 6, 7, 8) against (5, 6, 9, 8) agree on 3 of 4 tokens, first differing at token 3."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from reftx.recipes.edit import run as edit_run
    from reftx.eval import scoring

    class Fake:
        off = False

        @contextmanager
        def disabled(self):
            self.off = True
            yield
            self.off = False

    model, seen = Fake(), []

    def score(m, tok, prompts, conts, *a, **k):
        seen.append((m.off, prompts, conts))
        rows = [(5, 6, 9, 8), (1, 2)] if m.off else [(5, 6, 7, 8), (1, 2)]
        return [SimpleNamespace(argmax=r) for r in rows]

    monkeypatch.setattr(scoring, "score_continuations", score)
    tok = SimpleNamespace(decode=lambda ids: f"<{ids[0]}>")
    rows = edit_run.locality_rows(model, tok, ["p1", "p2"], ["Paris.", ""])
    assert rows == [{"locality": 0.75, "agree": 3, "tokens": 4, "first_diff": (2, "<9>", "<7>")},
                    {"locality": 1.0, "agree": 2, "tokens": 2, "first_diff": None}]
    assert seen == [(False, ["p1", "p2"], [" Paris.", " ?"]), (True, ["p1", "p2"], [" Paris.", " ?"])]


def test_demo_prints_each_answer_beside_what_scores_it(tiny_dir, monkeypatch):
    """reftx edit --prompt ...: every unrelated prompt's before/after answers sit beside its own
    locality (agreeing tokens, the first that differs) and the note on what locality measures."""
    import re

    from rich.console import Console

    from reftx.recipes.edit import run as edit_run

    out = Console(width=250, record=True, file=open(os.devnull, "w"))
    monkeypatch.setattr(edit_run, "console", out)
    res = edit_run.demo(str(tiny_dir), "The capital of Norway is", "Lima", unrelated=["One two", "Red green blue"],
                        steps=3, max_new_tokens=4)
    text = out.export_text()
    rows, cells = [], None  # each table row's cells, wrapped lines joined
    for line in text.splitlines():
        if line.startswith("│"):
            parts = [c.strip() for c in line.strip("│").split("│")]
            cells = parts if cells is None else [f"{a} {b}".strip() for a, b in zip(cells, parts)]
        elif cells is not None:
            rows, cells = rows + [cells], None
    assert [r[0] for r in rows] == ["The capital of Norway is", "One two", "Red green blue"]
    assert re.fullmatch(r"reliability \d\.\d\d", rows[0][3])
    for (_, before, after, measured), value in zip(rows[1:], res["locality_per_prompt"], strict=True):
        m = re.fullmatch(r"locality (\d\.\d\d) \((\d+)/(\d+) tokens agree(; token \d+: '.*' -> '.*')?\)", measured)
        assert m, measured
        loc, agree, n, first = m.groups()
        assert float(loc) == round(value, 2) == round(int(agree) / int(n), 2) and (first is None) == (agree == n)
        assert before and after  # the generated answers sit beside it
    assert res["locality"] == pytest.approx(sum(res["locality_per_prompt"]) / 2)
    summary = next(ln for ln in text.splitlines() if ln.startswith("reliability ") and "/" not in ln)
    assert summary == f"reliability {res['reliability']:.2f}, locality {res['locality']:.2f}"  # no rephrase given
    assert " ".join(edit_run.LOCALITY_NOTE.split()) in " ".join(text.split())
