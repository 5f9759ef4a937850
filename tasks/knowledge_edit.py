"""knowledge_edit: CounterFact and zsRE in the EasyEdit format, and ROME's known_1000 (METHODS.md §2, §7).

Data under ``{data_dir}`` (see shared/data/SOURCES.md):

* ``counterfact/counterfact-edit.json`` (10,000 records; also ``-edit-1k`` 1,000, ``-train`` 10,000,
  ``-val`` 1,919): one JSON array of {case_id, prompt, subject, target_new, ground_truth,
  rephrase_prompt, locality_prompt, locality_ground_truth}.
* ``zsre/zsre_mend_train-1k.json`` (1,000): one JSON array of {subject, src, alt, rephrase, loc,
  loc_ans, answers...}: the edit prompt is ``src``, the new target ``alt``, the locality prompt
  ``loc`` with its answer ``loc_ans``. Records 534 and 723 have an empty ``alt`` (no edit asked):
  they are skipped, leaving 998 edits.
* ``counterfact/known_1000.json`` (1,209 facts SmolLM-size models may know): {known_id, subject,
  attribute, template, prompt, relation_id}. Not edits: ``known_accuracy`` probes how many of these
  facts a model completes, and the editing engine (reftx/recipes/edit/engine.py) takes unrelated prompts for
  BaFT's locality loss from it, so they never overlap the evaluated locality prompts.

Every edit becomes one ``Example``: prompt = the edit prompt, target = " " + target_new (the
continuation is tokenised on its own, so it carries its leading space), meta = subject, rephrase,
locality prompt and answer, ground truth, file and record index. Split ``edit`` is every record.
Neither file has portability prompts (EasyEdit's ``portability`` fields) nor ROME's
``generation_prompts``, so there is no portability metric; ROME's fluency (``ngram_entropy``, on
generated text) is reported by ``reftx edit`` with ``recipe.fluency_tokens`` > 0, on greedy
continuations of each edit's prompt and paraphrase instead (reftx.recipes.edit.run.fluency).

Metrics (EasyEdit's definitions, teacher forcing through ``reftx.eval.scoring``), per edit, then averaged:

* reliability: token accuracy of target_new after the edit prompt: the share of its tokens that
  are the edited model's argmax given the prompt and the target's previous tokens;
* generality: the same after the rephrased prompt;
* locality: after the locality prompt, teacher-forced on locality_ground_truth, the share of its
  token positions whose argmax token is the same under the edited and the unedited model.

And ROME/MEMIT's CounterFact protocol on CounterFact edits (``counterfact_scores``; not on zsRE,
which has no old target): efficacy, paraphrase and neighborhood scores and magnitudes, computed
on the edited model by ``edit_scores`` and on the unedited one (``model.disabled()``) by
``unedited_scores``, never one from the other.

``reftx run`` on this task trains one intervention on all edits at once (a batch edit through the
ordinary training loop); ``reftx edit`` runs the editing protocol (single, batch, sequential).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from reftx.core.errors import DataError
from reftx.eval.metrics import get_metric, register_metric, score_metrics
from reftx.data.examples import Example
from reftx.eval.task import Task, read_text, register_task

FILES = {"counterfact": "counterfact/counterfact-edit.json", "zsre": "zsre/zsre_mend_train-1k.json"}
KNOWN_FILE = "counterfact/known_1000.json"
KEYS = {  # dataset -> (prompt, target_new, rephrase, locality prompt, locality answer, subject, ground truth)
    "counterfact": ("prompt", "target_new", "rephrase_prompt", "locality_prompt", "locality_ground_truth",
                    "subject", "ground_truth"),
    "zsre": ("src", "alt", "rephrase", "loc", "loc_ans", "subject", None),
}


@dataclass(frozen=True)
class Edit:
    """One edit request with its evaluation prompts."""

    prompt: str
    target: str  # target_new, without a leading space
    rephrase: str
    locality_prompt: str
    locality_answer: str
    subject: str
    ground_truth: str = ""
    index: int = 0  # position in its file


@dataclass(frozen=True)
class KnownFact:
    subject: str
    prompt: str
    attribute: str


def read_array(path: Path) -> list[Any]:
    """A file holding one JSON array; a missing file or bad JSON raises DataError naming file:line."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    return data


def _strings(rec: Any, keys: tuple[str | None, ...], where: str) -> list[str]:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    bad = [k for k in keys if k is not None and not (isinstance(rec.get(k), str) and rec[k].strip())]
    if bad:
        raise DataError(f"{where}: missing, empty or non-string field(s) {', '.join(bad)}")
    return [rec[k] if k is not None else "" for k in keys]


def read_edits(path: Path, dataset: Literal["counterfact", "zsre"]) -> list[Edit]:
    """Edits from an EasyEdit-format CounterFact or zsRE file (fields in ``KEYS``). A record whose
    new target is the empty string requests no edit and is skipped (zsRE records 534 and 723)."""
    out = []
    for i, rec in enumerate(read_array(path)):
        if isinstance(rec, dict) and rec.get(KEYS[dataset][1]) == "":
            continue
        vals = _strings(rec, KEYS[dataset], f"{path} (record {i})")
        out.append(Edit(*(v.strip() for v in vals), index=i))
    return out


def read_known(path: Path) -> list[KnownFact]:
    """ROME's known_1000.json: facts stated as a prompt whose continuation is ``attribute``."""
    out = []
    for i, rec in enumerate(read_array(path)):
        subject, prompt, attribute = _strings(rec, ("subject", "prompt", "attribute"), f"{path} (record {i})")
        out.append(KnownFact(subject, prompt, attribute))
    return out


def edit_example(e: Edit, file: str) -> Example:
    return Example(e.prompt, " " + e.target, meta={
        "subject": e.subject, "rephrase": e.rephrase, "locality_prompt": e.locality_prompt,
        "locality_answer": " " + e.locality_answer, "ground_truth": e.ground_truth, "file": file,
        "index": e.index})


def argmax_agreement(edited: tuple[int, ...], unedited: tuple[int, ...]) -> float:
    """Locality of one prompt: the share of positions where the two argmax tokens agree."""
    if len(edited) != len(unedited) or not edited:
        raise ValueError(f"argmax sequences must be non-empty and equally long, got {len(edited)} and {len(unedited)}")
    return sum(a == b for a, b in zip(edited, unedited)) / len(edited)


# -- ROME/MEMIT's CounterFact protocol (kmeng01/rome: experiments/py/eval_utils_counterfact.py for the
# per-prompt numbers, experiments/summarize.py for the scores). Its "probability" of a target is
# exp(-mean token NLL) (test_batch_prediction divides the summed NLL by the target's length): the
# geometric mean of the token probabilities, not their product. Comparisons are strict, as there.
def rome_prob(nll: float) -> float:
    """ROME's P(target) from the target's mean token NLL: exp(-nll)."""
    return math.exp(-nll)


def counterfact_scores(edit: tuple[float, float], rephrase: tuple[float, float],
                       neighborhood: tuple[float, float]) -> dict[str, float]:
    """One edit's ROME scores from (mean NLL of target_new, mean NLL of target_true) after the edit
    prompt, the rephrase and the neighborhood (locality) prompt. A score is 1.0 when the wanted
    target is the more likely (new for efficacy and paraphrase, true for neighborhood), a magnitude
    the gap P(wanted) - P(other); ROME averages them over an edit's prompts (one each here), then
    over edits."""
    def pair(wanted: float, other: float) -> tuple[float, float]:
        return float(other > wanted), rome_prob(wanted) - rome_prob(other)

    out: dict[str, float] = {}
    for name, (wanted, other) in (("efficacy", edit), ("paraphrase", rephrase),
                                  ("neighborhood", neighborhood[::-1])):
        out[f"{name}_score"], out[f"{name}_magnitude"] = pair(wanted, other)
    return out


def compute_n_gram_entropy(sentence: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3),
                           agg: Literal["arith", "geom"] = "arith") -> float:
    """ROME's fluency of one text: for each n, the entropy (bits) of its word n-gram frequencies,
    times its weight (2/3 for bigrams, 4/3 for trigrams), then their mean (or geometric mean).
    Words: nltk's Treebank word tokenizer on the whole text (ROME's ``nltk.word_tokenize`` also
    splits sentences first with punkt, whose model is not installed: a period inside the text
    stays on its word here)."""
    from nltk.tokenize import word_tokenize

    words = word_tokenize(sentence, preserve_line=True)
    values = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        values.append(w * sum(-c / total * math.log2(c / total) for c in counts.values()))
    return _agg(values, agg)


def n_gram_entropy(texts: list[str], agg: Literal["arith", "geom"] = "arith") -> float:
    """ROME's ``ngram_entropy`` of a set of generations: the mean of ``compute_n_gram_entropy``."""
    return _agg([compute_n_gram_entropy(t) for t in texts], agg)


def _agg(values: list[float], agg: str) -> float:
    if agg == "geom":  # scipy.stats.mstats.gmean: 0 when any value is 0
        return 0.0 if min(values) <= 0 else math.exp(sum(map(math.log, values)) / len(values))
    return sum(values) / len(values)


def edit_pairs(examples: list[Example], info: list[dict[str, float]] | None = None
               ) -> tuple[list[str], list[str], list[dict[str, float]], dict[int, tuple[int, int, int, int]]]:
    """The teacher-forced (prompt, continuation, example_info) triples of ``examples``: the edit
    prompts, the rephrases and the locality prompts (EasyEdit: 3n pairs, in that order), then, for
    each CounterFact edit (one with a ground truth), ROME's extra pairs: the old target after the
    edit prompt and after the rephrase, the new target after the locality prompt, and the old
    target there unless it is the locality answer (it is in every shipped record). Returns the
    pairs and, per CounterFact edit, the indices of P(old | prompt), P(old | rephrase),
    P(new | locality prompt) and P(old | locality prompt)."""
    n = len(examples)
    info = info or [{} for _ in range(3 * n)]
    prompts = [ex.prompt for ex in examples] + [ex.meta["rephrase"] for ex in examples]
    prompts += [ex.meta["locality_prompt"] for ex in examples]
    conts = [ex.target for ex in examples] * 2 + [ex.meta["locality_answer"] for ex in examples]
    infos, extra = list(info), {}
    for i, ex in enumerate(examples):
        old = " " + ex.meta.get("ground_truth", "")
        if not old.strip():
            continue
        k = len(prompts)
        extra[i] = (k, k + 1, k + 2, 2 * n + i if ex.meta["locality_answer"] == old else k + 3)
        more = [(ex.prompt, old, info[i]), (ex.meta["rephrase"], old, info[n + i]),
                (ex.meta["locality_prompt"], ex.target, info[2 * n + i])]
        if ex.meta["locality_answer"] != old:
            more.append((ex.meta["locality_prompt"], old, info[2 * n + i]))
        for p, c, d in more:
            prompts.append(p), conts.append(c), infos.append(d)
    return prompts, conts, infos, extra


def _rows(scores: list[Any], examples: list[Example], extra: dict[int, tuple[int, int, int, int]]
          ) -> list[dict[str, float]]:
    """Reliability and generality (EasyEdit) and, for CounterFact edits, ROME's scores per edit."""
    n = len(examples)
    rows = [{"reliability": scores[i].token_accuracy, "generality": scores[n + i].token_accuracy} for i in range(n)]
    nll = [-s.mean_logprob for s in scores]  # ROME's "probs": the mean token NLL of a target
    for i, (old, old_r, new_loc, old_loc) in extra.items():
        rows[i].update(counterfact_scores((nll[i], nll[old]), (nll[n + i], nll[old_r]), (nll[new_loc], nll[old_loc])))
    return rows


def edit_scores(model: Any, tokenizer: Any, examples: list[Example], chat: bool, batch_size: int = 16,
                unedited_locality: list[tuple[int, ...]] | None = None,
                example_info: list[dict[str, float]] | None = None) -> list[dict[str, float]]:
    """Per-edit reliability, generality and locality of ``model`` (a ReftModel) on ``examples``,
    and for CounterFact edits ROME's efficacy/paraphrase/neighborhood scores and magnitudes
    (``counterfact_scores``) of the same model.

    ``unedited_locality``: the unedited model's argmax tokens on each locality continuation
    (computed here with ``model.disabled()`` when None). ``example_info``: floats passed to the
    primitives (e.g. which bank slot holds the edit), one dict per edit (the same for its three
    prompts) or 3n dicts: the edit prompts', then the rephrases', then the locality prompts'."""
    from reftx.eval.scoring import score_continuations

    n = len(examples)
    info = example_info or [{} for _ in examples]
    if len(info) not in (n, 3 * n):
        raise ValueError(f"example_info needs {n} or {3 * n} entries, got {len(info)}")
    info = info * 3 if len(info) == n else info
    prompts, conts, infos, extra = edit_pairs(examples, info)
    scores = score_continuations(model, tokenizer, prompts, conts, chat, batch_size, example_info=infos)
    if unedited_locality is None:
        unedited_locality = unedited_argmax(model, tokenizer, examples, chat, batch_size)
    rows = _rows(scores, examples, extra)
    for i, row in enumerate(rows):
        row["locality"] = argmax_agreement(scores[2 * n + i].argmax, unedited_locality[i])
    return [{k: r[k] for k in ("reliability", "generality", "locality")} | r for r in rows]


def unedited_scores(model: Any, tokenizer: Any, examples: list[Example], chat: bool,
                    batch_size: int = 16) -> tuple[list[dict[str, float]], list[tuple[int, ...]]]:
    """The unedited model (``model.disabled()`` for a ReftModel) in one pass: per-edit reliability
    and generality (and ROME's CounterFact scores where the edit has a ground truth), and its
    argmax tokens on each locality continuation (locality's reference)."""
    from contextlib import nullcontext

    from reftx.eval.scoring import score_continuations

    n = len(examples)
    prompts, conts, _, extra = edit_pairs(examples)
    with model.disabled() if hasattr(model, "disabled") else nullcontext():
        s = score_continuations(model, tokenizer, prompts, conts, chat, batch_size)
    return _rows(s, examples, extra), [s[2 * n + i].argmax for i in range(n)]


def unedited_argmax(model: Any, tokenizer: Any, examples: list[Example], chat: bool,
                    batch_size: int = 16) -> list[tuple[int, ...]]:
    """The unedited model's argmax tokens on each example's locality continuation."""
    from contextlib import nullcontext

    from reftx.eval.scoring import score_continuations

    prompts = [ex.meta["locality_prompt"] for ex in examples]
    conts = [ex.meta["locality_answer"] for ex in examples]
    with model.disabled() if hasattr(model, "disabled") else nullcontext():
        return [s.argmax for s in score_continuations(model, tokenizer, prompts, conts, chat, batch_size)]


def known_accuracy(model: Any, tokenizer: Any, facts: list[KnownFact], chat: bool = False,
                   batch_size: int = 16) -> list[float]:
    """What the model knows: per fact, the token accuracy of " " + attribute after its prompt
    (teacher forcing, as reliability). On a ReftModel the interventions apply, as for any model."""
    from reftx.eval.scoring import score_continuations

    scores = score_continuations(model, tokenizer, [f.prompt for f in facts], [" " + f.attribute for f in facts],
                                 chat, batch_size)
    return [s.token_accuracy for s in scores]


def _column(name: str, doc: str):
    def compute(row: dict[str, float], example: Any) -> float | None:
        return row.get(name)  # the edit's value, from edit_scores (None: not a CounterFact edit)

    compute.__qualname__ = name
    return register_metric(name, compute, doc=doc)  # aggregate: the mean over the edits


EDIT_METRICS = tuple(_column(name, doc).name for name, doc in (
    ("reliability", "Token accuracy of the new target after the edit prompt (EasyEdit), mean over edits."),
    ("generality", "Token accuracy of the new target after the rephrased prompt (EasyEdit), mean over edits."),
    ("locality", "Share of the locality answer's argmax tokens unchanged by the edit (EasyEdit), mean over edits."),
))
_ROME = "(ROME's CounterFact protocol; P = exp(-mean token NLL)), mean over CounterFact edits."
COUNTERFACT_METRICS = tuple(_column(name, doc).name for name, doc in (
    ("efficacy_score", f"Share of edit prompts with P(new) > P(true) {_ROME}"),
    ("efficacy_magnitude", f"P(new) - P(true) after the edit prompt {_ROME}"),
    ("paraphrase_score", f"Share of rephrased prompts with P(new) > P(true) {_ROME}"),
    ("paraphrase_magnitude", f"P(new) - P(true) after the rephrased prompt {_ROME}"),
    ("neighborhood_score", f"Share of neighborhood prompts with P(true) > P(new) {_ROME}"),
    ("neighborhood_magnitude", f"P(true) - P(new) after the neighborhood prompt {_ROME}"),
))


@register_metric("ngram_entropy")
def ngram_entropy(prediction: str, example: Any) -> float:
    """ROME's fluency: weighted 2-/3-gram entropy (bits) of a generated text, mean over texts."""
    return compute_n_gram_entropy(prediction)


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means of every metric over the edits (``edit_scores`` rows; NaN for no edits); ROME's
    CounterFact metrics where some edit has them."""
    out = {}
    for m in (get_metric(name) for name in EDIT_METRICS + COUNTERFACT_METRICS):
        values = [v for v in (m.compute(r, None) for r in rows) if v is not None]
        if values or m.name in EDIT_METRICS:
            out[m.key] = m.aggregate(values)
    return out


@register_task("knowledge_edit")
class KnowledgeEdit(Task):
    """CounterFact / zsRE edits (EasyEdit format). Metrics: reliability, generality, locality;
    on CounterFact also ROME's efficacy, paraphrase and neighborhood scores and magnitudes."""

    @dataclass(frozen=True)
    class Options:
        dataset: Literal["counterfact", "zsre"] = "counterfact"  # which edit set
        file: str | None = None  # file under data_dir; null: counterfact/counterfact-edit.json or zsre/zsre_mend_train-1k.json
        known_file: str = KNOWN_FILE  # ROME's known facts, the engine's pool of unrelated prompts

    splits = ("edit",)
    generate = False
    metrics = EDIT_METRICS + COUNTERFACT_METRICS

    @property
    def file(self) -> str:
        return self.options.file or FILES[self.options.dataset]

    def load(self, split: str) -> list[Example]:
        return [edit_example(e, self.file) for e in read_edits(self.data_dir / self.file, self.options.dataset)]

    def known(self) -> list[KnownFact]:
        return read_known(self.data_dir / self.options.known_file)

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        raise NotImplementedError("knowledge_edit scores with teacher forcing (evaluate), not generated text")

    def evaluate(self, model: Any, tokenizer: Any, examples: list[Example], cfg: Any, chat: bool,
                 show_progress: bool = True, references: Any = None) -> tuple[dict[str, float], list[str]]:
        """Per-edit reliability, generality, locality and ROME's scores (``edit_scores``, teacher
        forcing), then their means; the predictions are each edit's row as JSON."""
        rows = edit_scores(model, tokenizer, examples, chat, cfg.batch_size)
        return score_metrics(self.metrics, rows, examples), [json.dumps(r) for r in rows]
