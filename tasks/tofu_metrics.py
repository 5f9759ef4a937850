"""TOFU's evaluation (Maini et al. 2024), written from the paper's definitions; used by split ``tofu``
of ``tofu_unlearn`` (tasks/tofu.py). Every log-probability comes from ``reftx.eval.scoring``.

Per set (forget, retain, real_authors, world_facts; metric keys end in ``_{set}``):

* ``rougeL_recall``: ROUGE-L recall of the greedy answer against the gold answer (``rouge_l_recall`` below).
* ``prob``: the length-normalised answer probability P(a|q)^(1/|a|) = exp(mean token log-prob),
  averaged over questions. real_authors / world_facts are multiple choice: the answer's normalised
  probability divided by the sum over the answer and its perturbed (wrong) options.
* truth ratio (``truth_ratio: geometric``, the default, as open-unlearning
  ``src/evals/metrics/memorization.py`` ``truth_ratio`` computes it): R = P(false) / P(true) with
  P(true) = P(ã|q)^(1/|ã|), the paraphrased answer ã (real_authors / world_facts: the answer
  itself), and P(false) = exp(−mean_j avg-loss(â_j)), the *geometric* mean of the perturbed
  answers' normalised probabilities. ``truth_ratio_forget`` is mean(min(R, 1/R)) (open-unlearning's
  ``closer_to_1_better``: 1 when the model cannot tell true from false); on the utility sets
  ``truth_ratio_{set}`` is mean(max(0, 1 − R)) (``true_better``). ``truth_ratio: arithmetic`` takes
  the arithmetic mean of the perturbed probabilities instead (one version of TOFU's aggregation
  script); the aggregation is the same. Before this option existed reftx used the arithmetic mean
  and reported mean(R) on the forget set (values above 1 appear in old results).
* ``gate``: the mean input-gate value σ(g(h)) of GRUN-style interventions on the set's prompts
  (every gated layer; only for models with gates).

ROUGE-L recall, prob and the two truth-ratio aggregates are registered metrics (reftx.eval.metrics:
``rougel_recall``, ``tofu_prob``, ``truth_ratio_closer_to_1``, ``truth_ratio_true_better``), computed
per example from the answer or from ``likelihood_stats``' row and aggregated per set.

Overall:

* ``forget_quality``: the p-value of the two-sample Kolmogorov–Smirnov test (scipy.stats.ks_2samp)
  between the forget-set truth ratios R of the evaluated model and of the retain-only model
  (``retain_model``); high: indistinguishable from a model that never saw the forget set. The
  retain model's R are cached in its folder; on a miss it is loaded by the loader the runner
  passes (``Task.reference_models``): this module never loads a model.
* ``model_utility``: the harmonic mean of the 9 numbers {prob, rougeL_recall, truth_ratio} ×
  {retain, real_authors, world_facts} (0 if any is 0).

open-unlearning's memorization and privacy metrics (``task.options.memorization: true``; formulas
and their reference files in tasks/unlearning_metrics.py; ``memorization_metrics`` below), from one
teacher-forced pass over question + answer + EOS of the forget set and of the holdout set (set
``holdout``: TOFU's holdoutNN, authors never trained on; its answers are not generated):

* ``exact_memorization_forget``, ``extraction_strength_forget``: means over the forget set.
* ``mia_loss_auc``, ``mia_zlib_auc``, ``mia_min_k_auc``, ``mia_min_k_plus_plus_auc``: the AUC of
  each attack between forget (members) and holdout (non-members); 1: the forget set looks trained on.
* ``privleak``: Min-K%'s AUC against the retain model's on the same sets (cached in its folder
  like the truth ratios), (AUC_retain − AUC) / (1 − AUC_retain) · 100 as open-unlearning computes it.

A model as it is (the stage-1 or the retain-only model, before any unlearning) is evaluated by
``reftx baseline`` (reftx.recipes.train.evaluate_base) on an unlearning experiment's split ``tofu``:

    reftx baseline experiments/unlearning/tofu_grun.yaml name=tofu_stage1_forget01
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from scipy.stats import ks_2samp

import torch.nn.functional as F

from reftx.data.encoding import collate_train, encode
from reftx.core.errors import ConfigError, DataError
from reftx.eval.metrics import register_metric, score_metrics
from reftx.engine.positions import IGNORE
from reftx.eval.scoring import ContinuationScore, batched_forward, score_continuations
from reftx.data.examples import Example
from reftx.eval.task import Loader

from .unlearning_metrics import (
    MIN_K,
    exact_memorization,
    extraction_strength,
    mia_loss,
    mia_min_k,
    mia_min_k_plus_plus,
    mia_zlib,
    next_token_moments,
    privleak,
)


UTILITY_SETS = ("retain", "real_authors", "world_facts")
SETS = ("forget", *UTILITY_SETS)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of ``prediction`` against ``reference``, scored as TOFU scores it (the
    ``rouge_score`` package with ``use_stemmer=True``): lowercase, every run of characters outside
    [a-z0-9] a separator, Porter stems of tokens longer than 3 characters, then LCS / reference
    length (0 for an empty reference). Computed by torchmetrics (its stemmer is nltk's)."""
    from torchmetrics.functional.text import rouge_score

    return float(rouge_score(prediction, reference, use_stemmer=True, rouge_keys="rougeL")["rougeL_recall"])


@register_metric("rougel_recall", key="rougeL_recall")
def rougel_recall(prediction: str, example: Example) -> float:
    """ROUGE-L recall of the answer against the gold, as TOFU scores it (on a forget set: lower is forgotten)."""
    return rouge_l_recall(prediction, str(example.gold))

MULTIPLE_CHOICE = ("real_authors", "world_facts")
UTILITY_METRICS = ("prob", "rougeL_recall", "truth_ratio")
CACHE_FILE = "tofu_forget_truth_ratios.json"  # the retain-only model's R on the forget set, by key


def normalised_prob(score: ContinuationScore) -> float:
    """P(a|q)^(1/|a|) = exp(mean token log-probability)."""
    return math.exp(score.mean_logprob)


TRUTH_RATIOS = ("geometric", "arithmetic")


def truth_ratio(paraphrased: float, perturbed: list[float], mean: str = "geometric") -> float:
    """R = P(false) / P(true): the perturbed answers' normalised probabilities, averaged
    geometrically (open-unlearning: exp of minus the mean of their average token losses) or
    arithmetically, over the paraphrased answer's normalised probability."""
    if mean == "geometric":
        false = math.exp(sum(math.log(max(p, 1e-300)) for p in perturbed) / len(perturbed))
    elif mean == "arithmetic":
        false = sum(perturbed) / len(perturbed)
    else:
        raise ValueError(f"truth ratio mean must be one of {TRUTH_RATIOS}, got {mean!r}")
    return false / paraphrased


def closer_to_1(ratios: list[float]) -> float:
    """The forget-set aggregate: mean(min(R, 1/R)) (open-unlearning's ``closer_to_1_better``)."""
    return sum(min(r, 1.0 / (r + 1e-10)) for r in ratios) / len(ratios)


def true_better(ratios: list[float]) -> float:
    """The other sets' aggregate: mean(max(0, 1 − R)) (open-unlearning's ``true_better``)."""
    return sum(max(0.0, 1.0 - r) for r in ratios) / len(ratios)


def option_prob(answer: float, perturbed: list[float]) -> float:
    """The answer's normalised probability as a share of all options' (answer + perturbed)."""
    return answer / (answer + sum(perturbed))


@register_metric("tofu_prob", key="prob")
def tofu_prob(stats: dict[str, float], example: Example) -> float:
    """TOFU answer probability P(a|q)^(1/|a|) (multiple choice: the answer's share), mean per set."""
    return stats["prob"]


def _ratio(stats: dict[str, float], example: Example) -> float:
    return stats["R"]


register_metric("truth_ratio_closer_to_1", _ratio, aggregate=closer_to_1, key="truth_ratio",
                doc="TOFU truth ratio on the forget set: mean(min(R, 1/R)), 1 when true and false look alike.")
register_metric("truth_ratio_true_better", _ratio, aggregate=true_better, key="truth_ratio",
                doc="TOFU truth ratio on the utility sets: mean(max(0, 1 - R)), high when true beats false.")
SET_METRICS = ("rougel_recall", "tofu_prob", "truth_ratio_closer_to_1", "truth_ratio_true_better")


def forget_quality(model_ratios: list[float], retain_ratios: list[float]) -> float:
    """KS-test p-value between two samples of forget-set truth ratios."""
    return float(ks_2samp(model_ratios, retain_ratios).pvalue)


def harmonic_mean(values: list[float]) -> float:
    """n / Σ 1/v; 0 when any value is 0 (TOFU's aggregation of Model Utility)."""
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


def model_utility(metrics: dict[str, float]) -> float:
    """Harmonic mean of {prob, rougeL_recall, truth_ratio} on retain, real_authors and world_facts."""
    return harmonic_mean([metrics[f"{m}_{s}"] for s in UTILITY_SETS for m in UTILITY_METRICS])


def likelihood_stats(model: Any, tokenizer: Any, examples: list[Example], chat: bool,
                     batch_size: int = 16, mean: str = "geometric") -> list[dict[str, float]]:
    """Per example: ``prob`` (normalised, or option share for multiple choice) and truth ratio ``R``.
    One batched ``score_continuations`` call over every answer, paraphrase and perturbed answer."""
    prompts: list[str] = []
    conts: list[str] = []
    spans = []
    for ex in examples:
        texts = [str(ex.gold), ex.meta["paraphrased"], *ex.meta["perturbed"]]
        spans.append((len(prompts), len(texts)))
        prompts += [ex.prompt] * len(texts)
        conts += texts
    scores = score_continuations(model, tokenizer, prompts, conts, chat, batch_size)
    out = []
    for ex, (start, n) in zip(examples, spans):
        p = [normalised_prob(s) for s in scores[start:start + n]]
        answer, para, pert = p[0], p[1], p[2:]
        mc = ex.meta["set"] in MULTIPLE_CHOICE
        out.append({"prob": option_prob(answer, pert) if mc else answer, "R": truth_ratio(para, pert, mean)})
    return out


@torch.no_grad()
def mean_gate(model: Any, tokenizer: Any, examples: list[Example], chat: bool, batch_size: int = 16) -> float | None:
    """Mean of every ``*/gate`` value the interventions record on the examples' prompts (None: no gates)."""
    if not hasattr(model, "interventions"):
        return None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(examples), batch_size):
        enc = [encode(tokenizer, Example(ex.prompt, ""), 1024, chat, end_token=False)
               for ex in examples[s:s + batch_size]]
        batch = collate_train(enc, pad)
        batch.pop("labels")
        batch.pop("example_info", None)
        out = model(**{k: v.to(device) for k, v in batch.items()})  # with the encoded prompt_lengths
        for key, values in (out.get("records") or {}).items():
            if key.endswith("/gate"):
                for v in values:
                    total += float(v.float().sum())
                    count += v.numel()
    model.train(was_training)
    return total / count if count else None


def _cached(retain_model: str, key: str, compute: Any, load: Loader | None) -> Any:
    """``{retain_model}/{CACHE_FILE}[key]``; on a miss ``compute(*load())``, stored there."""
    from reftx.core.files import atomic_write

    cache = Path(retain_model) / CACHE_FILE
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in stored:
        if load is None:
            raise ConfigError("task.options.retain_model", f"{cache} holds no values for {key!r} and no "
                                                           "loader of the retain model was given: evaluate with "
                                                           "reftx run / eval / baseline, whose runner loads it")
        stored[key] = compute(*load())
        atomic_write(cache, lambda p: Path(p).write_text(json.dumps(stored)))
    return stored[key]


def retain_ratios(retain_model: str, examples: list[Example], chat: bool, key: str, batch_size: int,
                  mean: str = "geometric", load: Loader | None = None) -> list[float]:
    """The retain-only model's forget-set truth ratios, cached in ``{retain_model}/{CACHE_FILE}`` by
    ``key`` (which names the truth-ratio variant: the KS test compares like with like). On a cache
    miss ``load()`` gives the model and tokenizer (the runner's loader of ``retain_model``)."""
    key = f"{key}:chat={chat}:n={len(examples)}" + ("" if mean == "arithmetic" else f":tr={mean}")
    return _cached(retain_model, key, lambda model, tok: [
        r["R"] for r in likelihood_stats(model, tok, examples, chat, batch_size, mean)], load)


def retain_auc(retain_model: str, examples: list[Example], chat: bool, key: str, batch_size: int,
               load: Loader | None = None) -> float:
    """The retain-only model's Min-K% AUC on the forget and holdout ``examples`` (privleak's
    reference), cached like ``retain_ratios``."""
    key = f"{key}:chat={chat}:n={len(examples)}:mia_min_k:k={MIN_K}"
    return _cached(retain_model, key, lambda model, tok: score_metrics(  # record=False: not the evaluated model's
        ["mia_min_k"], token_scores(model, tok, examples, chat, batch_size), examples, record=False)["mia_min_k_auc"],
        load)


MIA_MAX_LENGTH = 512  # open-unlearning configs/data/datasets/TOFU_MIA.yaml max_length


def token_scores(model: Any, tokenizer: Any, examples: list[Example], chat: bool, batch_size: int = 16,
                 max_length: int = MIA_MAX_LENGTH) -> list[dict[str, float | None]]:
    """Per example, from one teacher-forced pass over prompt + gold answer + EOS (reftx.eval.scoring's
    batched forward; log-softmax in float32): ``em``, ``es``, ``mia_loss``, ``mia_zlib``,
    ``mia_min_k``, ``mia_min_k_plus_plus`` (tasks/unlearning_metrics.py). The EOS counts in LOSS
    and ZLib only, as in open-unlearning; the ZLib text is the gold tokens decoded."""
    encoded = [encode(tokenizer, Example(ex.prompt, str(ex.gold)), max_length, chat, end_token=True)
               for ex in examples]
    out: list[dict[str, float | None]] = [{} for _ in encoded]
    for idx, labels, result in batched_forward(model, tokenizer, encoded, batch_size):
        logp = F.log_softmax(result.logits[:, :-1].float(), dim=-1)
        target = labels[:, 1:]
        for row, i in enumerate(idx):
            keep = target[row] != IGNORE
            out[i] = _example_scores(logp[row][keep].cpu(), target[row][keep].cpu(), tokenizer)
    return out


def _example_scores(logp: Any, targets: Any, tokenizer: Any) -> dict[str, float | None]:
    tok_lp = logp.gather(-1, targets[:, None]).squeeze(-1)
    argmax = logp.argmax(-1)
    mu, var = next_token_moments(logp)
    loss = mia_loss(tok_lp) if targets.numel() else 0.0
    body = slice(0, max(targets.numel() - 1, 0))  # every answer token but the EOS
    return {"em": exact_memorization(argmax[body], targets[body]),
            "es": extraction_strength(argmax[body], targets[body]),
            "mia_loss": loss,
            "mia_zlib": mia_zlib(loss, tokenizer.decode(targets.tolist(), skip_special_tokens=True)),
            "mia_min_k": mia_min_k(tok_lp[body]),
            "mia_min_k_plus_plus": mia_min_k_plus_plus(tok_lp[body], mu[body], var[body])}


def memorization_metrics(model: Any, tokenizer: Any, examples: list[Example], chat: bool, batch_size: int,
                         retain_model: str | None = None, key: str = "", load: Loader | None = None
                         ) -> dict[str, float]:
    """EM and ES on the forget set, the four MIA AUCs between the forget and holdout sets and, with
    ``retain_model``, privleak (see the module docstring). Other sets in ``examples`` are ignored."""
    mia = [ex for ex in examples if ex.meta["set"] in ("forget", "holdout")]
    forget = [j for j, ex in enumerate(mia) if ex.meta["set"] == "forget"]
    if not forget or len(forget) == len(mia):
        raise DataError("tofu memorization metrics need forget and holdout examples "
                        f"(got {len(forget)} forget, {len(mia) - len(forget)} holdout)")
    scores = token_scores(model, tokenizer, mia, chat, batch_size)
    out = score_metrics(["exact_memorization", "extraction_strength"], [scores[j] for j in forget],
                        [mia[j] for j in forget], overall="{metric}_forget")
    out |= score_metrics(["mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus"], scores, mia)
    if retain_model:
        out["privleak"] = privleak(out["mia_min_k_auc"], retain_auc(retain_model, mia, chat, key, batch_size, load))
    return out


def _once(load: Loader | None) -> Loader | None:
    """``load`` called at most once (Forget Quality and privleak share the retain model)."""
    if load is None:
        return None
    loaded: list[tuple[Any, Any]] = []

    def get() -> tuple[Any, Any]:
        if not loaded:
            loaded.append(load())
        return loaded[0]

    return get


def evaluate_tofu(model: Any, tokenizer: Any, examples: list[Example], cfg: Any, chat: bool,
                  retain_model: str | None, key: str, show_progress: bool = True,
                  mean: str = "geometric", load_retain: Loader | None = None,
                  memorization: bool = False) -> tuple[dict[str, float], list[str]]:
    """Every TOFU metric on split ``tofu``'s examples (see the module docstring); returns the greedy
    answers ("" for holdout examples, which are not generated). Forget Quality's KS test runs on
    the per-question R of both models, as open-unlearning's ``ks_test`` does on ``truth_ratio``'s
    ``value_by_index``; ``load_retain`` loads the retain model (``retain_model``) when its values
    are not cached yet. ``memorization``: also open-unlearning's EM, ES, MIA AUCs and privleak."""
    from reftx.eval.generate import generate

    main = [i for i, ex in enumerate(examples) if ex.meta["set"] in SETS]
    tofu = [examples[i] for i in main]
    preds = [""] * len(examples)
    for i, pred in zip(main, generate(model, tokenizer, tofu, cfg, chat, "tofu answers", show_progress)):
        preds[i] = pred
    stats = likelihood_stats(model, tokenizer, tofu, chat, cfg.batch_size, mean)
    load = _once(load_retain)
    metrics: dict[str, float] = {}
    for name in SETS:
        idx = [i for i, ex in enumerate(tofu) if ex.meta["set"] == name]
        if not idx:
            continue
        subset = [tofu[i] for i in idx]
        ratio = "truth_ratio_closer_to_1" if name == "forget" else "truth_ratio_true_better"
        per_set = f"{{metric}}_{name}"  # rougeL_recall_forget, prob_forget, ...
        metrics |= score_metrics(["rougel_recall"], [preds[main[i]] for i in idx], subset, overall=per_set)
        metrics |= score_metrics(["tofu_prob", ratio], [stats[i] for i in idx], subset, overall=per_set)
        gate = mean_gate(model, tokenizer, subset, chat, cfg.batch_size)
        if gate is not None:
            metrics[f"gate_{name}"] = gate
        if name == "forget" and retain_model:
            ref = retain_ratios(retain_model, subset, chat, key, cfg.batch_size, mean, load)
            metrics["forget_quality"] = forget_quality([stats[i]["R"] for i in idx], ref)
    if all(f"prob_{s}" in metrics for s in UTILITY_SETS):
        metrics["model_utility"] = model_utility(metrics)
    if memorization:
        metrics |= memorization_metrics(model, tokenizer, examples, chat, cfg.batch_size, retain_model, key, load)
    return metrics, preds
