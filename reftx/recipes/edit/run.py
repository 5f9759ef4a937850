"""``reftx edit``: an editing experiment from YAML (single, batch or sequential; reftx/recipes/edit/engine.py),
or one fact given on the command line with before/after generations.

Run dir ``{output_dir}/{name}-{mode}``:
  config.yaml    the resolved experiment
  results.json   mean reliability / generality / locality (sequential: ``metric@N`` after N edits),
                 the unedited model's reliability and generality, steps per edit, config hash,
                 wall / train / eval seconds, versions
  edits.jsonl    one line per edit (sequential: per edit and evaluation point): its stable id, file index,
                 prompt, target, the three metrics, steps and final loss, and ``metrics`` (its values under
                 results.json's keys, for paired comparisons: reftx report)
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape
from rich.table import Table

from reftx.config.hashing import config_hash
from reftx.core.convert import dump_yaml
from reftx.data.encoding import use_chat
from reftx.recipes.edit.engine import EditOptions, Editor, JobResult, bank_spec, console
from reftx.core.errors import ConfigError
from reftx.config.schema import EvalConfig, Experiment, TrainConfig
from reftx.engine.model import attach
from reftx.data.examples import Example
from reftx.eval.outcomes import example_ids

EDIT_METRICS = ("reliability", "generality", "locality")
COUNTERFACT = ("efficacy_score", "efficacy_magnitude", "paraphrase_score", "paraphrase_magnitude",
               "neighborhood_score", "neighborhood_magnitude")  # ROME's, on CounterFact edits only


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _means(rows: list[dict[str, Any]], keys=EDIT_METRICS + COUNTERFACT, suffix: str = "") -> dict[str, float]:
    return {f"{k}{suffix}": _mean([r[k] for r in rows if k in r]) for k in keys
            if k in EDIT_METRICS or any(k in r for r in rows)}


def edit_folder(exp: Experiment, mode: str) -> Path:
    """Where an edit run of ``exp`` in ``mode`` writes: ``{output_dir}/{name}-{mode}`` (reftx sweep's cells too)."""
    return Path(exp.output_dir) / f"{exp.name}-{mode}"


def run_edit(exp: Experiment, show_progress: bool = True, options: EditOptions | None = None,
             resume: bool | str | Path = False) -> dict[str, Any]:
    """Run the editing protocol of ``exp`` (the ``edit`` recipe: its ``recipe:`` options are an
    ``EditOptions``; an experiment naming no recipe is read as ``recipe: {name: edit}``) and write
    ``{output_dir}/{name}-{mode}/`` through the one run-folder writer (reftx.runs.folder.run_folder:
    locked while written; when it already holds a run, ``{name}-{mode}-2``, ... so a finished
    run is never overwritten). ``resume`` (``reftx run --resume [DIR]``, what ``reftx sweep`` passes for
    an interrupted cell): the folder (DIR, else ``{name}-{mode}``) of an unfinished run of this config
    is run again in place (an edit run keeps nothing partial, so it starts over); a finished one is
    left as it is and its results returned."""
    from reftx.recipes.resume import state
    from reftx.runs.folder import run_folder

    if options is None:  # the recipe's options, typed by the one converter
        from reftx.core.convert import from_dict

        name = exp.recipe.get("name", "edit")
        if name != "edit":
            raise ConfigError("recipe.name", f"reftx edit runs the edit recipe, but this experiment names {name!r}")
        options = from_dict(EditOptions, {k: v for k, v in exp.recipe.items() if k != "name"}, "recipe",
                            "option of recipe 'edit'")
    base = edit_folder(exp, options.mode)
    if resume is not False:
        base = base if resume is True else Path(resume)
        st = state(base, exp.to_dict())
        if st == "finished":
            console.print(f"{base} holds this run, finished: nothing to do")
            return json.loads((base / "results.json").read_text())
        if st.startswith("another config"):
            raise ConfigError("--resume", f"{base} holds {st}, not this edit run: give its folder or run without --resume")
    with run_folder(base, f"reftx edit {exp.name}", reuse=resume is not False,
                    say=lambda text: console.print(escape(text))) as out:
        return _run_edit(exp, options, out, show_progress)


def _run_edit(exp: Experiment, opts: EditOptions, out: Any, show_progress: bool) -> dict[str, Any]:
    from reftx.recipes.train import eval_examples, load_base, load_task
    from reftx.train.run import seed_everything
    from reftx.tasks.knowledge_edit import unedited_scores

    t0 = time.perf_counter()
    if len(exp.interventions) != 1:
        raise ConfigError("interventions", f"editing needs exactly one intervention entry, got {len(exp.interventions)}")
    resolved = exp.to_dict()
    chash = config_hash(resolved)
    out.text("config.yaml", dump_yaml(resolved))
    console.rule(f"[bold]reftx edit {escape(str(exp.name))} ({opts.mode}, config {chash})")
    seed_everything(exp.seed)
    task = load_task(exp)
    examples = eval_examples(exp, task)
    base, tok = load_base(exp)
    chat = use_chat(tok, exp.model.chat_template)
    model = attach(base, [bank_spec(exp.interventions[0], 1 if opts.mode == "sequential" else opts.parallel)])
    known = [(k.prompt, k.subject) for k in task.known()] if opts.locality_prompts else []
    editor = Editor(model, tok, examples, opts, exp.train, chat, exp.seed, known)
    editor.log = out.log
    t_eval = time.perf_counter()
    before, reference = unedited_scores(model, tok, examples, chat)
    clock = {"eval": time.perf_counter() - t_eval}
    metrics: dict[str, float] = _means(before, EDIT_METRICS[:2] + COUNTERFACT, "_unedited")
    edit = _sequential if opts.mode == "sequential" else _independent
    lines, results = edit(editor, examples, before, dict(enumerate(reference)), metrics, clock, show_progress)
    metrics.update(_steps(results, opts.stop_loss))
    if opts.fluency_tokens:
        t_eval = time.perf_counter()
        metrics.update(fluency(editor, examples, results, opts.fluency_tokens))
        clock["eval"] += time.perf_counter() - t_eval
    # the edited model's figures first (the first is a sweep's headline), then the unedited model's
    metrics = dict(sorted(metrics.items(), key=lambda kv: kv[0].endswith("_unedited")))
    res = {"name": exp.name, "mode": opts.mode, "config_hash": chash, "task": task.name,
           "dataset": task.options.dataset, "n_edits": len(examples), "metrics": metrics,
           "trainable_parameters_per_slot": sum(p.numel() for p in editor.bank.slots[0].parameters()),
           "train_seconds": clock["train"], "eval_seconds": clock["eval"]}
    res = out.results(res, started=t0)
    out.jsonl("edits.jsonl", lines)
    _table(res, metrics)
    return res


def _jobs(n: int, opts: EditOptions) -> list[list[int]]:
    """The edits of each job: one per job (single), ``batch_edits`` per job (batch), all (sequential)."""
    size = {"single": 1, "batch": opts.batch_edits, "sequential": n}[opts.mode]
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


def fluency(editor: Editor, examples: list[Example], results: list[JobResult], tokens: int) -> dict[str, float]:
    """ROME's fluency, the n-gram entropy of generated text (``tasks/knowledge_edit.n_gram_entropy``),
    of each edit's prompt and paraphrase followed by ``tokens`` greedy tokens: ``fluency_unedited``
    with the interventions off, ``fluency`` with each job's trained weights (loaded into slot 0,
    where generation routes every row; sequential: the final weights). ROME samples from its
    records' generation prompts, which EasyEdit's files lack (docs/protocols.md)."""
    from reftx.eval.generate import generate
    from reftx.tasks.knowledge_edit import n_gram_entropy

    cfg = EvalConfig(batch_size=16, max_new_tokens=tokens)
    ed = editor

    def texts(idx: list[int]) -> list[str]:
        shown = [Example(p) for i in idx for p in (examples[i].prompt, examples[i].meta.get("rephrase") or examples[i].prompt)]
        return [f"{e.prompt} {g}" for e, g in zip(shown, generate(ed.model, ed.tok, shown, cfg, ed.chat, "fluency", False))]

    with ed.model.disabled():
        before = texts(list(range(len(examples))))
    jobs = _jobs(len(examples), ed.opts)
    after: list[str] = []
    for job, res in zip(jobs, results if ed.opts.mode != "sequential" else results[-1:]):
        ed.bank.slots[0].load_state_dict(res.state)
        after += texts(job)
    return {"fluency": n_gram_entropy(after), "fluency_unedited": n_gram_entropy(before)}


def _independent(editor: Editor, examples: list[Example], before: list[dict[str, float]],
                 unedited: dict[int, tuple[int, ...]], metrics: dict[str, float], clock: dict[str, float],
                 show: bool) -> tuple[list[dict[str, Any]], list[JobResult]]:
    """single / batch: every job from a fresh initialisation, in slots; then each edit evaluated
    with its own job's weights."""
    n, opts = len(examples), editor.opts
    jobs = _jobs(n, opts)
    t = time.perf_counter()
    results = editor.train_jobs(jobs, show=show)
    clock["train"] = time.perf_counter() - t
    t = time.perf_counter()
    rows = editor.evaluate_jobs(jobs, results, unedited)
    clock["eval"] += time.perf_counter() - t
    per_edit = [results[j] for j, job in enumerate(jobs) for _ in job]
    metrics.update(_means(rows))
    ids = example_ids(examples)
    return [_line(examples[i], ids[i], before[i], rows[i], per_edit[i]) for i in range(n)], results


def _sequential(editor: Editor, examples: list[Example], before: list[dict[str, float]],
                unedited: dict[int, tuple[int, ...]], metrics: dict[str, float], clock: dict[str, float],
                show: bool) -> tuple[list[dict[str, Any]], list[JobResult]]:
    """sequential: one intervention edited fact after fact; every edit so far evaluated at each
    of ``checkpoints``."""
    n, opts = len(examples), editor.opts
    editor.bank.reset(0, editor.init_seed(0))
    lines: list[dict[str, Any]] = []
    results: list[JobResult] = []
    t0, eval_s = time.perf_counter(), 0.0
    points = [c for c in opts.checkpoints if c <= n] or [n]
    ids = example_ids(examples)
    for i in range(n):
        if opts.sequence_balance_weight:
            editor.seq_states += editor.site_states([examples[i].prompt], [editor.pos[i]])
        results += editor.train_jobs([[i]], reset=False)
        if i + 1 in points:
            t = time.perf_counter()
            rows = editor.evaluate(list(range(i + 1)), [0] * (i + 1), unedited)
            eval_s += time.perf_counter() - t
            lines += [{**_line(examples[j], ids[j], before[j], rows[j], results[j], f"@{i + 1}"), "after": i + 1}
                      for j in range(i + 1)]
            metrics.update(_means(rows, suffix=f"@{i + 1}"))
            console.print(f"after {i + 1} edits: " + ", ".join(f"{k} {v:.3f}" for k, v in _means(rows).items()))
    clock["train"] = time.perf_counter() - t0 - eval_s
    clock["eval"] += eval_s
    return lines, results


def _table(res: dict[str, Any], metrics: dict[str, float]) -> None:
    table = Table(title=f"{res['name']} ({res['mode']}, {res['n_edits']} edits, config {res['config_hash']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}")
    table.add_row("wall time (s)", f"{res['wall_seconds']:.1f}")
    console.print(table)


def _line(ex: Example, eid: str, before: dict[str, float], row: dict[str, float], res: JobResult,
          suffix: str = "") -> dict[str, Any]:
    """One edits.jsonl line; ``id``: the edit's stable id (reftx.eval.outcomes.example_ids) and ``metrics``:
    its values under the results.json keys they are averaged into (sequential: ``reliability@N``)."""
    metrics = {f"{k}{suffix}": row[k] for k in EDIT_METRICS + COUNTERFACT if k in row}
    metrics |= {f"{k}_unedited": before[k] for k in EDIT_METRICS[:2] + COUNTERFACT if k in before}
    return {"id": eid, "index": ex.meta.get("index"), "prompt": ex.prompt, "target": ex.target.strip(), **row,
            "reliability_unedited": before["reliability"], "generality_unedited": before["generality"],
            "steps": res.steps, "loss": res.loss, "metrics": metrics}


def _steps(results: list[JobResult], stop: float) -> dict[str, float]:
    return {"steps_mean": _mean([r.steps for r in results]),
            "converged": _mean([float(r.loss < stop) for r in results])}


LOCALITY_NOTE = ("reliability / generality: the share of the target's tokens the edited model predicts (argmax) "
                 "after the prompt, fed the target token by token. locality: fed the unedited model's own answer "
                 "token by token, the share of positions where the edited model predicts the same next token; "
                 "a generated answer instead follows its own tokens, so it can change from the first differing "
                 "token on while locality stays high.")


def locality_rows(model: Any, tok: Any, prompts: list[str], answers: list[str]) -> list[dict[str, Any]]:
    """Per unrelated prompt, locality as the editing metrics measure it (teacher-forced on the
    unedited model's answer): ``locality``, the tokens that agree (``agree`` of ``tokens``) and the
    first position where they differ (``first_diff``: index, unedited token, edited token; or None)."""
    from reftx.tasks.knowledge_edit import argmax_agreement
    from reftx.eval.scoring import score_continuations

    conts = [" " + (a or "?") for a in answers]  # as edit_scores continues the first one
    edited = [s.argmax for s in score_continuations(model, tok, prompts, conts)]
    with model.disabled():
        unedited = [s.argmax for s in score_continuations(model, tok, prompts, conts)]
    rows = []
    for e, u in zip(edited, unedited):
        diff = next((i for i, (a, b) in enumerate(zip(e, u)) if a != b), None)
        rows.append({"locality": argmax_agreement(e, u), "agree": sum(a == b for a, b in zip(e, u)), "tokens": len(u),
                     "first_diff": None if diff is None else (diff, tok.decode([u[diff]]), tok.decode([e[diff]]))})
    return rows


def demo(model_name: str, prompt: str, target: str, rephrase: str | None = None, unrelated: list[str] = (),
         kind: str = "loreft", layer: int | None = None, rank: int = 4, lr: float = 5e-3, steps: int = 100,
         max_new_tokens: int = 12, seed: int = 0, show: bool = True) -> dict[str, Any]:
    """Edit one fact (``prompt`` -> ``target``) and show greedy generations before and after, each
    beside the figure that scores it (reliability, generality, or locality per unrelated prompt)."""
    from reftx.engine import sites
    from reftx.eval.generate import generate
    from reftx.models.loading import load_model
    from reftx.tasks.knowledge_edit import edit_scores

    torch.manual_seed(seed)
    base, tok = load_model(model_name)
    layer = sites.num_layers(base.config) // 2 if layer is None else layer
    model = attach(base, [bank_spec({"kind": kind, "rank": rank, "layers": [layer], "positions": "all_prompt"}, 1)])
    unrelated = list(unrelated) or ["The capital of France is"]
    cfg = EvalConfig(batch_size=8, max_new_tokens=max_new_tokens)
    shown = [Example(p) for p in [prompt, *([rephrase] if rephrase else []), *unrelated]]
    with model.disabled():
        before = generate(model, tok, shown, cfg, False, "before", show_progress=False)
    # locality is teacher-forced on the unedited model's own greedy answer to the unrelated prompt
    ex = Example(prompt, " " + target.strip(), meta={"subject": "", "rephrase": rephrase or prompt,
                                                    "locality_prompt": unrelated[0],
                                                    "locality_answer": " " + (before[-len(unrelated)] or "?")})
    editor = Editor(model, tok, [ex], EditOptions(), TrainConfig(lr=lr, max_steps=steps, max_grad_norm=None), False, seed)
    editor.bank.reset(0, editor.init_seed(0))
    res = editor.train_jobs([[0]], reset=False)[0]
    after = generate(model, tok, shown, cfg, False, "after", show_progress=False)
    scores = edit_scores(model, tok, [ex], False)[0]
    local = locality_rows(model, tok, unrelated, before[-len(unrelated):])
    scores["locality"] = sum(r["locality"] for r in local) / len(local)  # the mean over every unrelated prompt
    if show:
        title = f"edit: {prompt!r} -> {target!r} ({kind}, layer {layer}, rank {rank}, {res.steps} steps, loss {res.loss:.4f})"
        _demo_table(title, shown, before, after, scores, local, bool(rephrase))
    return {"before": before, "after": after, "steps": res.steps, "loss": res.loss, **scores,
            "locality_per_prompt": [r["locality"] for r in local]}


def _demo_table(title: str, shown: list[Example], before: list[str], after: list[str], scores: dict[str, float],
                local: list[dict[str, Any]], rephrased: bool) -> None:
    """The demo's table: each prompt's answers before and after beside the figure that scores it."""
    table = Table(title=title, show_lines=True)
    for col in ("prompt", "before", "after", "measured"):
        table.add_column(col, max_width=48 if col != "measured" else 30)
    measured = [f"reliability {scores['reliability']:.2f}", *([f"generality {scores['generality']:.2f}"] * rephrased)]
    for r in local:
        diff = r["first_diff"]
        where = "" if diff is None else f"; token {diff[0] + 1}: {diff[1]!r} -> {diff[2]!r}"
        measured.append(f"locality {r['locality']:.2f} ({r['agree']}/{r['tokens']} tokens agree{where})")
    for e, b, a, m in zip(shown, before, after, measured):
        table.add_row(*map(escape, (e.prompt, b, a, m)))  # model output: a "[/]" in it is text
    console.print(table)
    console.print(", ".join(f"{k} {v:.2f}" for k, v in scores.items() if rephrased or k != "generality"))
    console.print(LOCALITY_NOTE, style="dim")


__all__ = ["demo", "edit_folder", "run_edit"]
