"""open-unlearning's memorization and privacy metrics, as pure functions on tensors, each written from
its reference implementation (locuslab/open-unlearning; the file is named in each docstring) and
checked on hand-made numbers in tests/reference/test_unlearning_metrics.py. tasks/tofu_metrics.py
feeds them the per-token statistics of split ``tofu`` (``task.options.memorization: true``).

Inputs per example (one teacher-forced forward over question + answer + EOS, reftx.eval.scoring):
``logprobs`` (n,) the log-probability of each answer token, the final EOS included; ``argmax`` (n,)
the model's most likely token at each position; ``targets`` (n,) the gold tokens; ``mu``, ``var``
(n,) the mean and variance of log p under the model's next-token distribution p at each position.
As in the reference, exact memorization, extraction strength, Min-K% and Min-K%++ leave the last
answer token (the EOS) out (``tokenwise_logprobs`` drops it); LOSS and ZLib keep it
(``evaluate_probability`` averages every labelled token).

MIA scores follow the reference's sign: the higher an example's score, the less likely it is a
member. ``auc`` is sklearn's ``roc_auc_score`` with the forget (member) set labelled 0 and the
holdout (non-member) set labelled 1: 1 when the forget set is much more likely than the holdout.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import Tensor

from reftx.eval.metrics import register_metric

MIN_K = 0.4  # open-unlearning configs/eval/tofu_metrics/mia_min_k*.yaml (the attack class defaults to 0.2)


def exact_memorization(argmax: Tensor, targets: Tensor) -> float | None:
    """Share of answer tokens whose teacher-forced argmax is the gold token; None for no tokens
    (left out of the mean). open-unlearning src/evals/metrics/memorization.py ``exact_memorization``."""
    if targets.numel() == 0:
        return None
    return float((argmax == targets).sum()) / targets.numel()


def extraction_strength(argmax: Tensor, targets: Tensor) -> float:
    """1 − k/n with k the smallest start such that the argmax reproduces the answer from token k to
    the end (teacher-forced: argmax[k:] == targets[k:]), n the answer length. As the reference's
    loop does, k stops at n − 1 when even the last token differs (ES = 1/n, not 0), and an empty
    answer scores 0 (kept in the mean). open-unlearning src/evals/metrics/memorization.py
    ``extraction_strength``."""
    n = targets.numel()
    if n == 0:
        return 0.0
    wrong = (argmax != targets).nonzero()
    k = int(wrong[-1]) + 1 if wrong.numel() else 0  # the suffix after the last mismatch matches
    return 1.0 - min(k, n - 1) / n


def mia_loss(logprobs: Tensor) -> float:
    """LOSS attack: the mean token NLL of the answer (EOS included).
    open-unlearning src/evals/metrics/mia/loss.py (``evaluate_probability``'s ``avg_loss``)."""
    return float(-logprobs.double().mean())


def zlib_length(text: str) -> int:
    """Bytes of zlib.compress(text as UTF-8) at zlib's default level."""
    return len(zlib.compress(text.encode("utf-8")))


def mia_zlib(loss: float, text: str) -> float:
    """ZLib attack: the LOSS score over the zlib-compressed length of the answer text (the gold
    tokens decoded with special tokens skipped). open-unlearning src/evals/metrics/mia/zlib.py."""
    return loss / zlib_length(text)


def _min_k_mean(values: Tensor, k: float) -> float:
    """−mean of the max(1, ⌊n·k⌋) smallest values; 0 for none."""
    if values.numel() == 0:
        return 0.0
    n = max(1, int(values.numel() * k))
    return float(-values.double().sort().values[:n].mean())


def mia_min_k(logprobs: Tensor, k: float = MIN_K) -> float:
    """Min-K% attack: −mean of the ⌊n·k⌋ (at least 1) lowest token log-probabilities (EOS left out
    by the caller). open-unlearning src/evals/metrics/mia/min_k.py."""
    return _min_k_mean(logprobs, k)


def next_token_moments(logprobs: Tensor) -> tuple[Tensor, Tensor]:
    """Mean μ = Σ_v p_v log p_v and variance σ² = Σ_v p_v (log p_v)² − μ² of log p under the
    next-token distribution p, from log-probabilities (..., V). A token of probability 0 adds 0
    (the limit; the reference would add NaN). open-unlearning src/evals/metrics/mia/min_k_plus_plus.py."""
    p = logprobs.exp()
    finite = torch.where(torch.isfinite(logprobs), logprobs, torch.zeros_like(logprobs))
    mu = (p * finite).sum(-1)
    return mu, (p * finite.square()).sum(-1) - mu.square()


def mia_min_k_plus_plus(logprobs: Tensor, mu: Tensor, var: Tensor, k: float = MIN_K) -> float:
    """Min-K%++ attack: each token's log-probability standardised, (log p(x_t) − μ_t) / σ_t with
    σ_t = sqrt(max(σ²_t, 1e-6)), then −mean of the ⌊n·k⌋ (at least 1) lowest (EOS left out by the
    caller). open-unlearning src/evals/metrics/mia/min_k_plus_plus.py."""
    if logprobs.numel() == 0:
        return 0.0
    z = (logprobs.double() - mu.double()) / var.double().clamp(min=1e-6).sqrt()
    return _min_k_mean(z, k)


def auc(forget: Sequence[float], holdout: Sequence[float]) -> float:
    """ROC AUC of the scores with forget labelled 0 and holdout 1, as sklearn's ``roc_auc_score``:
    the share of (forget, holdout) pairs where the holdout score is higher, ties counting ½.
    open-unlearning src/evals/metrics/mia/utils.py ``mia_auc``."""
    if not forget or not holdout:
        raise ValueError(f"AUC needs both sets: {len(forget)} forget and {len(holdout)} holdout scores")
    f = torch.tensor(list(forget), dtype=torch.float64)[:, None]
    h = torch.tensor(list(holdout), dtype=torch.float64)[None, :]
    wins = (h > f).sum().item() + 0.5 * (h == f).sum().item()
    return wins / (f.numel() * h.numel())


def privleak(model_auc: float, retain_auc: float) -> float:
    """Relative privacy leakage in percent, on 1 − AUC (MUSE's orientation):
    ((1 − AUC) − (1 − AUC_retain)) / ((1 − AUC_retain) + 1e-10) · 100. 0: as private as the retain
    model; negative: the forget set still looks like members. open-unlearning
    src/evals/metrics/privacy.py ``privleak`` (TOFU: the Min-K% AUC, configs/eval/tofu_metrics/privleak.yaml)."""
    score, ref = 1.0 - model_auc, 1.0 - retain_auc
    return (score - ref) / (ref + 1e-10) * 100


def member_auc(values: list[tuple[float, bool]]) -> float:
    """AUC of (score, is_member) pairs: members are the forget set (label 0), the rest the holdout."""
    return auc([s for s, m in values if m], [s for s, m in values if not m])


# Registered metrics: ``prediction`` is the example's dict of per-example scores (tofu_metrics.token_scores).
@register_metric("exact_memorization")
def _em(stats: dict[str, float], example: object) -> float | None:
    """Exact memorization (open-unlearning): share of answer tokens the teacher-forced argmax gets right, mean per set (on a forget set: lower is forgotten)."""
    return stats["em"]


@register_metric("extraction_strength")
def _es(stats: dict[str, float], example: object) -> float:
    """Extraction strength (open-unlearning): 1 − (shortest teacher-forced answer prefix after which the argmax reproduces the rest) / length, mean per set."""
    return stats["es"]


def _mia(attack: str, doc: str) -> None:
    def compute(stats: dict[str, float], example: object) -> tuple[float, bool]:
        return stats[attack], getattr(example, "meta", {}).get("set") == "forget"

    register_metric(attack, compute, aggregate=member_auc, higher_is_better=None, key=f"{attack}_auc", doc=doc)


_mia("mia_loss", "MIA LOSS attack AUC (open-unlearning): forget (members) vs holdout by mean answer NLL; 1: forget much more likely.")
_mia("mia_zlib", "MIA ZLib attack AUC (open-unlearning): forget vs holdout by NLL / zlib length of the answer.")
_mia("mia_min_k", "MIA Min-K% attack AUC (open-unlearning, k = 0.4): forget vs holdout by the lowest token log-probs.")
_mia("mia_min_k_plus_plus", "MIA Min-K%++ attack AUC (open-unlearning, k = 0.4): forget vs holdout by standardised token log-probs.")
MEMORIZATION_METRICS = ("exact_memorization", "extraction_strength", "mia_loss", "mia_zlib", "mia_min_k",
                        "mia_min_k_plus_plus")

__all__ = ["MEMORIZATION_METRICS", "MIN_K", "auc", "exact_memorization", "extraction_strength", "member_auc",
           "mia_loss", "mia_min_k", "mia_min_k_plus_plus", "mia_zlib", "next_token_moments", "privleak",
           "zlib_length"]
