"""open-unlearning's memorization and privacy metrics (tasks/unlearning_metrics.py) on hand-made
inputs; each test names the reference file of locuslab/open-unlearning it checks against."""
from __future__ import annotations

import math

import pytest
import torch

import reftx.tasks  # noqa: F401  (registers the zoo)
from reftx.eval.metrics import score_metrics
from reftx.data.examples import Example
from reftx.tasks.unlearning_metrics import (
    auc,
    exact_memorization,
    extraction_strength,
    mia_loss,
    mia_min_k,
    mia_min_k_plus_plus,
    mia_zlib,
    next_token_moments,
    privleak,
    zlib_length,
)

LN2 = math.log(2)
T = torch.tensor


def D(values: list[float]) -> torch.Tensor:
    """Float64: the hand values below are exact to 1e-12."""
    return torch.tensor(values, dtype=torch.float64)


def test_exact_memorization():
    """src/evals/metrics/memorization.py exact_memorization: (argmax == labels).sum() / len."""
    assert exact_memorization(T([1, 2, 3, 4]), T([1, 2, 0, 4])) == 0.75  # 3 of 4 tokens right
    assert exact_memorization(T([7]), T([7])) == 1.0
    assert exact_memorization(T([], dtype=torch.long), T([], dtype=torch.long)) is None  # left out of the mean


def test_extraction_strength():
    """src/evals/metrics/memorization.py extraction_strength: the first k in range(n) whose suffix
    preds[k:] equals labels[k:], then 1 − k/n; the loop ends at k = n − 1 without a match."""
    gold = T([5, 6, 7, 8])  # n = 4
    assert extraction_strength(T([5, 6, 7, 8]), gold) == 1.0  # k = 0: all reproduced
    assert extraction_strength(T([9, 6, 7, 8]), gold) == 0.75  # k = 1: 1 − 1/4
    assert extraction_strength(T([9, 6, 0, 8]), gold) == 0.25  # last mismatch at 2: k = 3, 1 − 3/4
    assert extraction_strength(T([5, 6, 7, 0]), gold) == 0.25  # last token wrong: no k matches, k = 3 -> 1/4
    assert extraction_strength(T([0, 0, 0, 0]), gold) == 0.25  # nothing right: the same 1/n, not 0
    # n = 1 and wrong: the loop's only k is 0, so ES = 1 − 0/1 = 1 (the reference's quirk, kept)
    assert extraction_strength(T([1]), T([2])) == 1.0
    assert extraction_strength(T([], dtype=torch.long), T([], dtype=torch.long)) == 0.0  # scored 0 and kept


def test_extraction_strength_matches_the_reference_loop():
    """The same as the reference's loop on random short sequences (its text restated: for k in
    range(n): break at the first k with preds[k:] == labels[k:]; ES = 1 − k/n)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 7, (1,), generator=g))
        labels, preds = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
        for k in range(n):
            if torch.equal(preds[k:], labels[k:]):
                break
        assert extraction_strength(preds, labels) == 1 - k / n


def test_mia_loss_and_zlib():
    """src/evals/metrics/mia/loss.py (avg_loss of evaluate_probability) and mia/zlib.py
    (loss / len(zlib.compress(text.encode("utf-8"))))."""
    # token probabilities 1/2 and 1/4: NLL ln2 and 2 ln2, mean 1.5 ln2 = 1.0397208
    assert mia_loss(D([-LN2, -2 * LN2])) == pytest.approx(1.5 * LN2, rel=1e-12)
    assert mia_loss(D([-LN2, -2 * LN2])) == pytest.approx(1.0397208, abs=1e-7)
    # zlib of "a": 2-byte header 78 9c, a 3-byte fixed-Huffman block (literal 'a', end of block),
    # 4-byte Adler-32 (A = 1 + 97 = 0x62, B = 0x62): 9 bytes; of "": 2 + 2 (empty block) + 4 = 8
    assert zlib_length("a") == 9 and zlib_length("") == 8
    assert mia_zlib(1.8, "a") == pytest.approx(0.2)  # 1.8 / 9


def test_min_k():
    """src/evals/metrics/mia/min_k.py: num_k = max(1, int(n · k)); −mean of the num_k smallest."""
    lp = D([-1.0, -4.0, -2.0, -3.0, -0.5])
    assert mia_min_k(lp, 0.4) == 3.5  # int(5 · 0.4) = 2 lowest: −4, −3 -> 3.5
    assert mia_min_k(lp) == 3.5  # k = 0.4 by default (open-unlearning's TOFU configs)
    assert mia_min_k(lp, 0.2) == 4.0  # int(1.0) = 1: −4
    assert mia_min_k(D([-1.0, -2.0]), 0.4) == 2.0  # int(0.8) = 0 -> at least 1
    assert mia_min_k(D([-1.0, -2.0, -3.0]), 0.4) == 3.0  # 3 · 0.4 = 1.2000000000000002 -> 1
    assert mia_min_k(lp, 1.0) == pytest.approx(2.1)  # every token: (1 + 4 + 2 + 3 + 0.5) / 5
    assert mia_min_k(D([])) == 0.0  # no tokens: 0, as the reference


def test_next_token_moments():
    """src/evals/metrics/mia/min_k_plus_plus.py: μ = Σ p log p, σ² = Σ p (log p)² − μ²."""
    # p = (1/2, 1/4, 1/4): log p = (−ln2, −2ln2, −2ln2); μ = −ln2/2 − ln2 = −1.5 ln2;
    # E[(log p)²] = ln2²/2 + 2 ln2² = 2.5 ln2²; σ² = 2.5 ln2² − 2.25 ln2² = 0.25 ln2²
    mu, var = next_token_moments(D([[-LN2, -2 * LN2, -2 * LN2]]))
    assert mu.tolist() == pytest.approx([-1.5 * LN2]) and var.tolist() == pytest.approx([0.25 * LN2 ** 2])
    mu, var = next_token_moments(D([0.0, -math.inf]))  # p = (1, 0): the 0 · (−inf) term is 0
    assert float(mu) == 0.0 and float(var) == 0.0


def test_min_k_plus_plus():
    """src/evals/metrics/mia/min_k_plus_plus.py: z = (log p(x) − μ) / sqrt(max(σ², 1e-6)), then as Min-K%."""
    mu, var = D([-1.5 * LN2] * 2), D([0.25 * LN2 ** 2] * 2)  # the distribution above, σ = ln2 / 2
    lp = D([-LN2, -2 * LN2])  # z = (−ln2 + 1.5ln2) / (ln2/2) = 1, z = (−2ln2 + 1.5ln2) / (ln2/2) = −1
    assert mia_min_k_plus_plus(lp, mu, var, 0.4) == pytest.approx(1.0)  # 1 lowest (int(0.8) -> 1): −(−1)
    assert mia_min_k_plus_plus(lp, mu, var, 1.0) == pytest.approx(0.0, abs=1e-12)  # −mean(1, −1)
    # a uniform distribution has σ² = 0, clamped to 1e-6 (σ = 1e-3): log p(x) = μ gives z = 0;
    # 0.002 above μ gives z = 2 -> score −2
    assert mia_min_k_plus_plus(D([-math.log(3) + 0.002]), D([-math.log(3)]), D([0.0]), 0.4) == pytest.approx(-2.0)
    assert mia_min_k_plus_plus(D([]), D([]), D([])) == 0.0


def test_auc_with_ties():
    """src/evals/metrics/mia/utils.py mia_auc: roc_auc_score(labels, scores), forget labelled 0 and
    holdout 1; equal to the share of (forget, holdout) pairs ordered holdout > forget, ties ½."""
    assert auc([1.0, 2.0], [3.0, 4.0]) == 1.0  # forget more likely (lower loss) than every holdout
    assert auc([3.0, 4.0], [1.0, 2.0]) == 0.0
    # pairs (1,2) (1,3) (2,3) won, (2,2) tied: 3.5 / 4. ROC of labels 0,0,1,1 at scores 1,2,2,3:
    # points (0,0) (0,.5) (.5,1) (1,1); trapezoids .375 + .5 = .875
    assert auc([1.0, 2.0], [2.0, 3.0]) == 0.875
    assert auc([0.5], [0.2, 0.5, 0.9]) == 0.5  # 0.9 wins, 0.5 ties, 0.2 loses: 1.5 / 3
    assert auc([1.0, 1.0], [1.0]) == 0.5  # all tied
    with pytest.raises(ValueError, match="both sets"):
        auc([1.0], [])


def test_auc_agrees_with_torchmetrics_roc():
    """The same numbers as a trapezoidal ROC AUC (torchmetrics' binary_auroc, sklearn's method)."""
    from torchmetrics.functional.classification import binary_auroc

    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        forget = torch.randint(0, 5, (7,), generator=g).double().tolist()  # few values: many ties
        holdout = torch.randint(0, 5, (9,), generator=g).double().tolist()
        target = torch.tensor([0] * 7 + [1] * 9)
        ref = float(binary_auroc(torch.tensor(forget + holdout), target))
        assert auc(forget, holdout) == pytest.approx(ref, abs=1e-6)


def test_privleak():
    """src/evals/metrics/privacy.py privleak: score = 1 − AUC, ref = 1 − AUC_retain,
    (score − ref) / (ref + 1e-10) · 100 (TOFU: on mia_min_k, configs/eval/tofu_metrics/privleak.yaml)."""
    assert privleak(0.9, 0.5) == pytest.approx(-80.0)  # (0.1 − 0.5) / 0.5 · 100: forget still looks trained on
    assert privleak(0.3, 0.6) == pytest.approx(75.0)  # (0.7 − 0.4) / 0.4 · 100
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(0.5, 1.0) == pytest.approx(0.5 / 1e-10 * 100)  # the 1e-10 keeps it finite


def test_registered_metrics_aggregate_per_set():
    """As tasks/tofu_metrics.memorization_metrics scores them: EM/ES means, MIA AUCs forget vs holdout."""
    exs = [Example("q", "a", meta={"set": s}) for s in ("forget", "forget", "holdout", "holdout")]
    stats = [{"em": 1.0, "es": 1.0, "mia_loss": 0.5, "mia_zlib": 0.1, "mia_min_k": 2.0, "mia_min_k_plus_plus": 1.0},
             {"em": None, "es": 0.5, "mia_loss": 1.5, "mia_zlib": 0.3, "mia_min_k": 2.0, "mia_min_k_plus_plus": 0.0},
             {"em": 0.0, "es": 0.0, "mia_loss": 1.0, "mia_zlib": 0.3, "mia_min_k": 2.0, "mia_min_k_plus_plus": 2.0},
             {"em": 0.0, "es": 0.0, "mia_loss": 2.0, "mia_zlib": 0.4, "mia_min_k": 1.0, "mia_min_k_plus_plus": 3.0}]
    out = score_metrics(["exact_memorization", "extraction_strength", "mia_loss", "mia_zlib", "mia_min_k",
                         "mia_min_k_plus_plus"], stats[:2] + stats[2:], exs)
    assert out["exact_memorization"] == 1 / 3  # None left out: (1 + 0 + 0) / 3
    assert out["extraction_strength"] == 0.375  # (1 + .5 + 0 + 0) / 4
    # loss: forget .5, 1.5 vs holdout 1, 2: pairs won (.5,1) (.5,2) (1.5,2) = 3/4
    # zlib: .1, .3 vs .3, .4: (.1,.3) (.1,.4) (.3,.4) won, (.3,.3) tied: 3.5/4
    # min_k: 2, 2 vs 2, 1: two ties, two lost: 1/4; min_k++: 1, 0 vs 2, 3: all won
    assert {k: out[k] for k in ("mia_loss_auc", "mia_zlib_auc", "mia_min_k_auc", "mia_min_k_plus_plus_auc")} == \
        {"mia_loss_auc": 0.75, "mia_zlib_auc": 0.875, "mia_min_k_auc": 0.25, "mia_min_k_plus_plus_auc": 1.0}
