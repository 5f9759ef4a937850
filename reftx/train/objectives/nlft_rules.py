"""NLFT's token weights and per-response losses as pure tensor functions (reftx.train.objectives.nlft
runs them on a model's scorings).

``released``: the rules of NLFT's released code, github.com/Julia-LiuJ/NLFT (commit ef88576, read,
not copied), file ``modeling_llama_unlikelihood_dynamic_correct.py`` (below "released:NNN" is a
line of that file). Per response token t of a response judged correct, with p_g its probability
after the guided prompt (the standard answer in the context) and τ = 0.95:

    salient_t  = p_g > τ                                          (released:292-294)
    cluster    = token_cluster(h, salient)  (neighbours, below)  (released:299)
    s_t        = 1 + ((p_g − τ)/(1 − τ))^5   salient                (released:300, 307)
                 (p_g/τ)^0.3                 cluster, not salient   (released:301, 306)
                 (p_g/τ)^0.6                 every other token      (released:302)
    loss       = 10 · [ mean_t NLL_t + mean_t s_t · NLL_t ]          (released:177-184, 206, 309)

so each token's NLL weighs 1 + s_t ∈ [1, 3], never less than SFT's 1. A response judged wrong gets
the unlikelihood term (released:361-424), with p the plain probability (trained), p_j after the
judged prompt (a negative verdict) and p_g after the guided one (both without gradient):

    unlike_t   = p_j/p > 1.5 and p_j/p_g > 1.5 and p_j > 0.01     (released:396-400)
    u_t        = 2σ(p_j/p − 1.5)             unlike                 (released:408-410, 419)
                 0                           cluster of the unlike tokens, not unlike (released:406, 418)
                 √p_g                        every other token; 0 for all of them when
                                             more than 6% of the tokens are unlike (released:411-413)
    loss       = 10 · −mean_t u_t · log q_t,  q_t = 1 − p_t (unlike) or p_t (released:415-423)

``token_cluster`` (released:313-359) grows a cluster from each seed token along the response, left
then right, with a running centre (the mean of the centre and each token taken): a neighbour joins
while its cosine *distance* to the centre is above 0.4 (the released code calls the distance
"similarity" and compares it with ``> x``; reftx does what the code does). The hidden states are
the last layer's at the positions that predict the response tokens, of the plain scoring
(released:157, 168-169, 275, 295).

``change``: reftx's reading of METHODS.md §8 (reftx before issue 26), weights from the ratio
p_g/p_plain; see ``change_weights``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def change_weights(logp_guided: Tensor, logp_plain: Tensor, mask: Tensor, threshold: float,
                   positive: float, negative: float, base: float) -> Tensor:
    """The ``change`` rule. (B, N) log-probabilities with and without guidance, mask (B, N) bool ->
    (B, N) float32 weights without gradient: ``positive`` where log p_g − log p_plain >= ln r,
    ``negative`` where <= −ln r, ``base`` elsewhere, 0 off the mask (r = ``threshold``)."""
    delta = logp_guided.detach().float() - logp_plain.detach().float()
    cut = math.log(threshold)
    w = torch.full_like(delta, base)
    w = torch.where(delta >= cut, torch.full_like(w, positive), w)
    w = torch.where(delta <= -cut, torch.full_like(w, negative), w)
    return torch.where(mask, w, torch.zeros_like(w))


def token_cluster(hidden: Tensor, seeds: Tensor, distance: float = 0.4) -> Tensor:
    """The released code's neighbour clustering (released:313-359). hidden (n, d): one response's
    hidden states in token order; seeds (n,) bool. Returns (n,) bool: the seeds and, from each seed,
    the neighbours taken walking left then right (the centre carried over) while the cosine distance
    of the next token to the running centre is above ``distance``; the centre becomes the mean of
    itself and each token taken."""
    h = hidden.detach().float().cpu()
    n = h.shape[0]
    out = torch.zeros(n, dtype=torch.bool)
    for idx in torch.nonzero(seeds.cpu()).flatten().tolist():
        centre = h[idx]
        for step in (-1, 1):
            j = idx + step
            while 0 <= j < n and 1.0 - float(F.cosine_similarity(centre[None], h[j][None])) > distance:
                out[j] = True
                centre = (centre + h[j]) / 2
                j += step
        out[idx] = True
    return out.to(seeds.device)


def correct_weights(p_guided: Tensor, hidden: Tensor, prob_threshold: float = 0.95, high: float = 5.0,
                    cluster: float = 0.3, low: float = 0.6, distance: float = 0.4) -> tuple[Tensor, Tensor, Tensor]:
    """The released weights s_t of one correct response (module docstring). p_guided (n,), hidden
    (n, d) -> (s (n,) float32 without gradient, salient (n,) bool, cluster (n,) bool)."""
    p = p_guided.detach().float()
    tau = prob_threshold
    salient = p / tau > 1
    near = token_cluster(hidden, salient, distance)
    s = (p / tau) ** low
    s = torch.where(near, (p / tau) ** cluster, s)
    s = torch.where(salient, 1 + ((p - tau).clamp(min=0) / (1 - tau)) ** high, s)
    return s, salient, near


def unlikelihood_weights(p_plain: Tensor, p_judged: Tensor, p_guided: Tensor, hidden: Tensor, ratio: float = 1.5,
                         min_prob: float = 0.01, centre: float = 1.5, max_share: float = 0.06,
                         distance: float = 0.4) -> tuple[Tensor, Tensor, Tensor]:
    """The released weights u_t of one wrong response (module docstring). p_plain, p_judged,
    p_guided (n,), hidden (n, d) -> (u (n,) float32 without gradient, unlike (n,) bool, cluster
    (n,) bool)."""
    p, pj, pg = (x.detach().float() for x in (p_plain, p_judged, p_guided))
    r1 = pj / p
    unlike = (r1 > ratio) & (pj / pg > ratio) & (pj > min_prob)
    near = token_cluster(hidden, unlike, distance)
    u = pg.sqrt()
    if p.numel() and float(unlike.float().mean()) > max_share:
        u = torch.zeros_like(u)
    u = torch.where(near, torch.zeros_like(u), u)
    u = torch.where(unlike, 2 * torch.sigmoid(r1 - centre), u)
    return u, unlike, near


def correct_loss(logp: Tensor, s: Tensor) -> Tensor:
    """mean_t (1 + s_t)·(−log p_t) of one response: its plain NLL plus the weighted term (before
    the factor 10). logp (n,) with gradient, s (n,); 0 in the graph for an empty response."""
    if logp.numel() == 0:
        return logp.sum()
    return ((1 + s) * -logp.float()).mean()


def unlikelihood_loss(logp: Tensor, u: Tensor, unlike: Tensor) -> Tensor:
    """−mean_t u_t·log q_t of one response, q_t = 1 − p_t on unlike tokens and p_t elsewhere (a q of
    0 becomes 1e-5, released:416), before the factor 10. logp (n,) with gradient."""
    if logp.numel() == 0:
        return logp.sum()
    p = logp.float().exp()
    q = torch.where(unlike, 1 - p, p)
    q = torch.where(q == 0, q + 1e-5, q)
    log_q = torch.where(unlike, q.log(), logp.float())  # log p itself where nothing changed (exact)
    return -(u * log_q).mean()


__all__ = ["change_weights", "correct_loss", "correct_weights", "token_cluster", "unlikelihood_loss",
           "unlikelihood_weights"]
