"""TOFU metrics (tasks/tofu_metrics.py) against hand-computed values; the split ``tofu`` on the real files."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import reftx.tasks  # noqa: F401  (registers the zoo)
from reftx.core.errors import ConfigError, DataError
from reftx.eval.scoring import ContinuationScore
from reftx.data.examples import Example
from reftx.eval.task import default_data_dir, get_task
from reftx.tasks.tofu_metrics import (
    CACHE_FILE,
    closer_to_1,
    evaluate_tofu,
    forget_quality,
    harmonic_mean,
    likelihood_stats,
    memorization_metrics,
    model_utility,
    normalised_prob,
    token_scores,
    option_prob,
    true_better,
    truth_ratio,
)

DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "tofu").is_dir(), reason="shared TOFU data not available")


def test_normalised_prob_is_geometric_mean_of_token_probs():
    s = ContinuationScore((math.log(0.5), math.log(0.125)), (0, 0), (1, 2))
    assert normalised_prob(s) == pytest.approx(0.25)  # (0.5 · 0.125)^(1/2)


def test_truth_ratio_and_option_prob():
    """open-unlearning src/evals/metrics/memorization.py truth_ratio: P(false) = exp(−mean of the
    perturbed answers' average losses), the geometric mean of their normalised probabilities."""
    # (0.1 · 0.2 · 0.3)^(1/3) = 0.006^(1/3) = 0.1817121 -> / 0.5
    assert truth_ratio(0.5, [0.1, 0.2, 0.3]) == pytest.approx(0.006 ** (1 / 3) / 0.5, rel=1e-12)
    assert truth_ratio(0.5, [0.1, 0.2, 0.3]) == pytest.approx(0.3634241, abs=1e-7)
    assert truth_ratio(0.5, [0.1, 0.2, 0.3], "arithmetic") == pytest.approx(0.4)  # mean 0.2 / 0.5
    assert truth_ratio(0.1, [0.2, 0.2]) == pytest.approx(2.0)
    # aggregates: forget mean(min(R, 1/R)); other sets mean(max(0, 1 − R))
    assert closer_to_1([0.5, 2.0, 1.0]) == pytest.approx(2 / 3)
    assert true_better([0.5, 2.0]) == pytest.approx(0.25)
    assert option_prob(0.6, [0.2, 0.1, 0.1]) == pytest.approx(0.6)  # 0.6 / 1.0
    assert option_prob(0.2, [0.2, 0.2, 0.2]) == pytest.approx(0.25)


def test_harmonic_mean_and_model_utility():
    assert harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / 7)  # 3 / (1 + 2 + 4)
    assert harmonic_mean([0.5, 0.0]) == 0.0
    values = [0.5, 1.0, 0.25, 0.5, 0.5, 1.0, 0.25, 0.5, 1.0]
    names = [f"{m}_{s}" for s in ("retain", "real_authors", "world_facts")
             for m in ("prob", "rougeL_recall", "truth_ratio")]
    metrics = dict(zip(names, values)) | {"prob_forget": 0.0}  # the forget set does not count
    assert model_utility(metrics) == pytest.approx(9 / (2 + 1 + 4 + 2 + 2 + 1 + 4 + 2 + 1))


def test_forget_quality_ks_p_values():
    # Exact two-sided KS p-values: fully separated samples of sizes n = m give D = 1 and
    # p = 2 / C(2n, n): only the two orderings that separate the samples reach D = 1.
    assert forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(2 / 20)
    assert forget_quality([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]) == pytest.approx(2 / 70)
    assert forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)  # same distribution
    # synthetic truth-ratio distributions: a shifted one is told apart, a resample of the same is not
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(60, generator=g).tolist(), torch.rand(60, generator=g).tolist()
    assert forget_quality(a, b) > 0.05
    assert forget_quality(a, [x + 0.5 for x in b]) < 1e-6


class Uniform(nn.Module):
    """A causal LM whose next-token distribution is uniform over ``vocab`` tokens."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kw):
        class Out:
            logits = torch.zeros(*input_ids.shape, self.vocab) + 0 * self.p

        return Out()


def _ex(name: str, n_perturbed: int) -> Example:
    para = "The answer" if name in ("forget", "retain") else "Paris"
    return Example("Where?", "Paris", meta={"set": name, "paraphrased": para,
                                            "perturbed": [f"Wrong {i}" for i in range(n_perturbed)]})


def test_likelihood_stats_uniform_model(tiny_dir):
    # every continuation has normalised probability 1/V: R = 1, option share = 1 / (1 + #perturbed)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    stats = likelihood_stats(Uniform(len(tok)), tok, [_ex("forget", 5), _ex("real_authors", 3)], chat=False)
    assert stats[0] == pytest.approx({"prob": 1 / len(tok), "R": 1.0})
    assert stats[1] == pytest.approx({"prob": 0.25, "R": 1.0})


class HalfEos(nn.Module):
    """A causal LM that gives the EOS token probability 1/2 at every position and 1 / (2 (V − 1))
    to each other token: logits 0 except ln(V − 1) on EOS."""

    def __init__(self, vocab: int, eos: int):
        super().__init__()
        self.vocab, self.eos = vocab, eos
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kw):
        logits = torch.zeros(*input_ids.shape, self.vocab) + 0 * self.p
        logits[..., self.eos] = math.log(self.vocab - 1)

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out


def test_token_scores_half_eos_model(tiny_dir):
    """tasks/unlearning_metrics.py through tofu_metrics.token_scores: the EOS counts in LOSS only, as
    in open-unlearning (evaluate_probability keeps it, tokenwise_logprobs drops the last label)."""
    from transformers import AutoTokenizer

    from reftx.tasks.unlearning_metrics import zlib_length

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    V, answer = len(tok), "Paris is the capital"
    n = len(tok(answer, add_special_tokens=False)["input_ids"])  # answer tokens; the EOS is one more
    a, b = math.log(2), math.log(2 * (V - 1))  # NLL of the EOS and of any other token
    [s] = token_scores(HalfEos(V, tok.eos_token_id), tok, [Example("Where?", answer)], chat=False)
    assert s["em"] == 0.0  # argmax is always EOS, never an answer token (the EOS itself is left out)
    assert s["es"] == pytest.approx(1 / n)  # nothing reproduced: k stops at n − 1
    # rel 1e-4: the log-softmax runs in float32 over V ≈ 49k logits
    assert s["mia_loss"] == pytest.approx((n * b + a) / (n + 1), rel=1e-4)  # mean over n + 1 tokens
    assert s["mia_zlib"] == pytest.approx(s["mia_loss"] / zlib_length(answer), rel=1e-9)  # text decoded back
    assert s["mia_min_k"] == pytest.approx(b, rel=1e-4)  # every answer token has the same NLL
    # log p takes the values −a (prob 1/2) and −b (total prob 1/2): μ = −(a + b)/2, σ = (b − a)/2;
    # an answer token: z = (−b + (a + b)/2) / ((b − a)/2) = −1 -> score 1
    assert s["mia_min_k_plus_plus"] == pytest.approx(1.0, rel=1e-3)


def test_memorization_metrics_uniform_model(tiny_dir):
    # every token has log-probability −ln V under the uniform model: all scores tie, every AUC is 1/2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    exs = [Example("Who?", "An author", meta={"set": "forget"}), Example("Where?", "Paris", meta={"set": "holdout"}),
           Example("What?", "A book", meta={"set": "retain"})]
    out = memorization_metrics(Uniform(len(tok)), tok, exs, chat=False, batch_size=2)
    assert {k: out[k] for k in ("mia_loss_auc", "mia_min_k_auc", "mia_min_k_plus_plus_auc")} == \
        {"mia_loss_auc": 0.5, "mia_min_k_auc": 0.5, "mia_min_k_plus_plus_auc": 0.5}
    assert set(out) == {"exact_memorization_forget", "extraction_strength_forget", "mia_loss_auc", "mia_zlib_auc",
                        "mia_min_k_auc", "mia_min_k_plus_plus_auc"}  # no retain model: no privleak
    with pytest.raises(DataError, match="forget and holdout"):
        memorization_metrics(Uniform(len(tok)), tok, exs[:1], chat=False, batch_size=2)


@needs_data
def test_tofu_split_real_files():
    task = get_task("tofu_unlearn", {"forget": "forget01", "retain_authors": 2, "n_utility": 25})
    exs = task.load("tofu")
    sets = [e.meta["set"] for e in exs]
    assert [sets.count(s) for s in ("forget", "retain", "real_authors", "world_facts")] == [40, 25, 25, 25]
    forget = [e for e in exs if e.meta["set"] == "forget"]
    assert forget[0].meta["file"] == "forget01_perturbed.json" and len(forget[0].meta["perturbed"]) == 5
    assert all(e.info["gate_label"] == (1.0 if e.meta["set"] == "forget" else 0.0) for e in exs)
    real = next(e for e in exs if e.meta["set"] == "real_authors")
    assert real.meta["paraphrased"] == real.gold and len(real.meta["perturbed"]) == 3  # the answer stands in
    retain_q = {q.question for q in task._forget_retain()[1]}
    assert all(e.prompt in retain_q for e in exs if e.meta["set"] == "retain")  # trained authors only
    every = get_task("tofu_unlearn", {"forget": "forget05", "retain_authors": 2, "n_utility": None,
                                      "n_forget_eval": 50}).load("tofu")
    sets = [e.meta["set"] for e in every]
    # retain_perturbed rows of authors 0-1 (40), all 100 real-author and 117 world-fact questions
    assert [sets.count(s) for s in ("forget", "retain", "real_authors", "world_facts")] == [50, 40, 100, 117]


@needs_data
def test_evaluate_tofu_metrics(tiny_dir):
    from reftx.config.schema import EvalConfig
    from reftx.models.loading import load_model
    from reftx.engine.model import attach

    task = get_task("tofu_unlearn", {"retain_authors": 2, "n_utility": 3, "n_forget_eval": 6})
    exs = task.load("tofu")
    base, tok = load_model(str(tiny_dir))
    cfg = EvalConfig(batch_size=8, max_new_tokens=4)
    loads = []

    def load_retain():  # the runner's loader (reftx.recipes.train.reference_loaders): called on a cache miss only
        loads.append(1)
        return load_model(str(tiny_dir))

    cache = tiny_dir / CACHE_FILE
    cache.unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="task.options.retain_model: .* no loader of the retain model"):
        evaluate_tofu(base, tok, exs, cfg, False, str(tiny_dir), "forget01:6", show_progress=False)
    metrics, preds = evaluate_tofu(base, tok, exs, cfg, False, str(tiny_dir), "forget01:6", show_progress=False,
                                   load_retain=load_retain)
    assert loads == [1] and cache.is_file()
    again, _ = evaluate_tofu(base, tok, exs, cfg, False, str(tiny_dir), "forget01:6", show_progress=False,
                             load_retain=load_retain)
    assert loads == [1] and again == metrics  # the cached ratios: the retain model is not loaded again
    assert len(preds) == len(exs) == 15
    assert metrics["forget_quality"] == pytest.approx(1.0)  # the retain model is this very model
    assert metrics["model_utility"] == pytest.approx(model_utility(metrics))
    assert not any(k.startswith("gate_") for k in metrics)  # no gates on a plain model
    stats = likelihood_stats(base, tok, exs[:6], False)
    assert metrics["truth_ratio_forget"] == pytest.approx(sum(min(s["R"], 1 / s["R"]) for s in stats) / 6)
    model = attach(base, [{"kind": "grun", "rank": 2, "layers": [2, 3], "positions": "last_prompt", "tie": "none"}])
    metrics, _ = evaluate_tofu(model, tok, exs, cfg, False, None, "x", show_progress=False)
    assert "forget_quality" not in metrics
    # gates start at σ(0) = 0.5 (zero-initialised gate layers)
    gates = [metrics[f"gate_{s}"] for s in ("forget", "retain", "real_authors", "world_facts")]
    assert gates == pytest.approx([0.5] * 4)


@needs_data
def test_evaluate_tofu_memorization(tiny_dir):
    from reftx.config.schema import EvalConfig
    from reftx.models.loading import load_model

    task = get_task("tofu_unlearn", {"retain_authors": 2, "n_utility": 2, "n_forget_eval": 4, "memorization": True})
    exs = task.load("tofu")
    assert [e.meta["set"] for e in exs].count("holdout") == 4
    base, tok = load_model(str(tiny_dir))
    cfg = EvalConfig(batch_size=8, max_new_tokens=2)
    loads = []

    def load_retain():
        loads.append(1)
        return load_model(str(tiny_dir))

    (tiny_dir / CACHE_FILE).unlink(missing_ok=True)
    metrics, preds = evaluate_tofu(base, tok, exs, cfg, False, str(tiny_dir), "forget01:4", show_progress=False,
                                   load_retain=load_retain, memorization=True)
    assert loads == [1]  # one load serves Forget Quality and privleak
    assert preds[-4:] == [""] * 4 and len(preds) == len(exs)  # holdout answers are not generated
    assert metrics["privleak"] == 0.0  # the retain model is this very model: the same AUC
    mia = [e for e in exs if e.meta["set"] in ("forget", "holdout")]
    alone = memorization_metrics(base, tok, mia, False, 8)  # the same numbers, the other sets ignored
    assert set(alone) == {"exact_memorization_forget", "extraction_strength_forget", "mia_loss_auc", "mia_zlib_auc",
                          "mia_min_k_auc", "mia_min_k_plus_plus_auc"}
    assert {k: metrics[k] for k in alone} == alone
    again, _ = evaluate_tofu(base, tok, exs, cfg, False, str(tiny_dir), "forget01:4", show_progress=False,
                             load_retain=load_retain, memorization=True)
    assert loads == [1] and again == metrics  # both cached in the retain model's folder
    plain, _ = evaluate_tofu(base, tok, [e for e in exs if e.meta["set"] != "holdout"], cfg, False, None, "x",
                             show_progress=False)
    assert not any("mia" in k or k == "privleak" for k in plain)
