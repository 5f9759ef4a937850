"""The comparisons of ``reftx report`` (reftx.runs.report writes them; the statistics:
reftx.runs.stats; what is read and how runs are grouped: reftx.runs.gather).

Per group and metric: the mean over seeds of the run's reported value (results.json) with a 95%
Student-t interval over seeds, or with ``bootstrap`` a two-level bootstrap interval over seeds ×
examples (from the per-example outcomes); one seed gets no interval, and the report says why.

Per pair of groups that share an eval set (every pair, or each group against ``baseline``), per
metric, the difference A − B over paired seeds (the same seed in both; a base model's one run, or a
group's one run that shares no seed with the other, is paired with every seed of the other) and:
* correct/incorrect outcomes (every per-example value 0 or 1, aggregated by the mean): the exact
  McNemar test on the discordant (seed, example) pairs pooled over paired seeds;
* other per-example outcomes (continuous scores; F1, AUROC and other non-mean aggregates, which are
  re-aggregated per resample): the paired bootstrap over seeds × examples;
* no per-example outcomes (set-level metrics such as TOFU's forget_quality, older runs): the sign
  test over the paired seeds' differences, with a t-interval over them.
The interval of the difference is the paired bootstrap's where per-example outcomes exist. The sign
test over seeds is shown beside every comparison. The p-values of the table are Holm-adjusted
together. MDE: the minimum detectable effect at 80% power (reftx.runs.stats.mde) for the observed
variance of the differences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from reftx.core.errors import ConfigError, did_you_mean
from reftx.runs import stats
from reftx.runs.gather import Group, Run, shared


UNREGISTERED = "unregistered"  # aggregate_of's answer for a metric name this process does not know


@dataclass
class Cell:
    """A group's value of one metric: its estimate and the runs that reported it."""

    est: stats.Estimate | None
    runs: list[Run]


@dataclass
class Pair:
    """One comparison A − B of one metric (see the module docstring)."""

    metric: str
    a: str
    b: str
    diff: float
    low: float | None
    high: float | None
    test: str
    p: float
    sign: stats.SignTest | None
    mde: float | None
    units: str
    note: str = ""
    p_holm: float = math.nan


@dataclass
class Report:
    groups: list[Group]
    metrics: list[str]
    cells: dict[tuple[str, str], Cell]
    pairs: list[Pair]
    notes: list[str] = field(default_factory=list)
    bootstrap: bool = False


def metric_keys(runs: list[Run], wanted: list[str] | None) -> list[str]:
    """The metrics reported: ``wanted`` (each must be some run's), else every numeric metric any run has."""
    found: dict[str, None] = {}
    for r in runs:
        found |= {k: None for k, v in r.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not wanted:
        return list(found)
    for key in wanted:
        if key not in found:
            raise ConfigError("--metrics", f"no run reports the metric {key!r}{did_you_mean(key, found)}; "
                              f"reported: {', '.join(found)}")
    return list(wanted)


def aggregate_of(runs: list[Run], key: str) -> tuple[Any, str]:
    """The aggregate of ``key``'s per-example values: None for the mean, else the registered metric's
    (an unregistered one: ``UNREGISTERED`` and the reason)."""
    name = next((r.aggregates[key] for r in runs if key in r.aggregates), None)
    if name is None:
        return None, ""
    from reftx.eval.metrics import get_metric

    try:
        return get_metric(name).aggregate, ""
    except ConfigError:
        return UNREGISTERED, (f"{key}: metric {name!r} is not registered here (a plugin? --import it); "
                           "compared over seeds only")


def table(runs: list[Run], key: str, ids: list[str] | None = None) -> tuple[list[str], list[list]]:
    """The per-example values of ``key``: the ids every run has a value for (in ``ids`` order when
    given) and one row per run."""
    order = ids if ids is not None else sorted(runs[0].outcomes)
    common = [i for i in order if all(key in r.outcomes.get(i, {}) for r in runs)]
    return common, [[r.outcomes[i][key] for i in common] for r in runs]


def _numeric(rows: list[list]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for row in rows for v in row)


def group_cell(g: Group, key: str, use_bootstrap: bool) -> Cell:
    """The group's estimate of ``key`` over its seeds (see the module docstring)."""
    runs = [r for r in g.runs if isinstance(r.metrics.get(key), (int, float))]
    if not runs:
        return Cell(None, [])
    est = stats.t_interval([float(r.metrics[key]) for r in runs])
    if not use_bootstrap or est.low is None:
        return Cell(est, runs)
    agg, _ = aggregate_of(runs, key)
    ids, rows = table(runs, key)
    if not ids or agg is UNREGISTERED or (agg is None and not _numeric(rows)):
        return Cell(stats.Estimate(est.mean, est.low, est.high, est.n, "t over seeds: no per-example values"), runs)
    boot = stats.bootstrap(rows, agg=agg)
    return Cell(stats.Estimate(est.mean, boot.low, boot.high, est.n), runs)


def seed_pairs(a: list[Run], b: list[Run]) -> tuple[list[tuple[Run, Run]], str]:
    """Runs of A and B paired by seed; a side of one run that is a base model (its seed changes
    nothing) or that shares no seed with the other is paired with every run of the other."""
    every = "one side's single run paired with every seed of the other"
    if (len(a) == 1 and a[0].method == "base") or (len(b) == 1 and b[0].method == "base"):
        return [(x, y) for x in a for y in b], every
    by_seed = {str(r.seed): r for r in b}
    pairs = [(r, by_seed[str(r.seed)]) for r in a if str(r.seed) in by_seed]
    if pairs:
        return pairs, ""
    if len(a) == 1 or len(b) == 1:
        return [(x, y) for x in a for y in b], every
    return [], "no seed in common: no paired comparison"


def _per_example(labels: tuple[str, str], pairs: list[tuple[Run, Run]], key: str, agg: Any) -> Pair | None:
    """The comparison from per-example outcomes (McNemar or paired bootstrap); None without them."""
    runs = [r for p in pairs for r in p]
    if agg is UNREGISTERED or not all(r.outcomes for r in runs):
        return None
    ids, rows = table(runs, key)
    if not ids:
        return None
    a_rows, b_rows = rows[0::2], rows[1::2]
    if agg is None and not _numeric(rows):
        return None
    boot = stats.bootstrap(a_rows, b_rows, agg=agg)
    units = f"{len(ids)} examples × {len(pairs)} seed pair{'s' * (len(pairs) > 1)}"
    if agg is None and all(v in (0, 1) for row in rows for v in row):
        b = sum(x == 1 and y == 0 for ra, rb in zip(a_rows, b_rows) for x, y in zip(ra, rb))
        c = sum(x == 0 and y == 1 for ra, rb in zip(a_rows, b_rows) for x, y in zip(ra, rb))
        diffs = [x - y for ra, rb in zip(a_rows, b_rows) for x, y in zip(ra, rb)]
        return Pair(key, *labels, boot.estimate, boot.low, boot.high, f"McNemar exact (b={b}, c={c})",
                    stats.mcnemar_exact(b, c), None, stats.mde(_sd(diffs) / math.sqrt(len(diffs))), units)
    return Pair(key, *labels, boot.estimate, boot.low, boot.high, "paired bootstrap", boot.p, None,
                stats.mde(boot.se), units)


def _sd(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0


def _over_seeds(labels: tuple[str, str], key: str, diffs: list[float], sign: stats.SignTest) -> Pair:
    """The comparison from per-seed differences only: t-interval and sign test."""
    est = stats.t_interval(diffs)
    mde = stats.mde(_sd(diffs) / math.sqrt(len(diffs)), df=len(diffs) - 1) if len(diffs) > 1 else None
    note = est.note.replace("1 seed", "1 seed pair") if est.note else ""
    return Pair(key, *labels, est.mean, est.low, est.high, "sign test over seeds", sign.p, sign, mde,
                f"{len(diffs)} seed pair{'s' * (len(diffs) > 1)}", note)


def compare(a: Group, b: Group, key: str, notes: list[str]) -> Pair | None:
    """A − B on ``key`` (None when either group lacks it or no runs pair up; said in ``notes``)."""
    ra = [r for r in a.runs if isinstance(r.metrics.get(key), (int, float))]
    rb = [r for r in b.runs if isinstance(r.metrics.get(key), (int, float))]
    if not ra or not rb:
        return None
    pairs, how = seed_pairs(ra, rb)
    if not pairs:
        notes.append(f"{a.label} vs {b.label}, {key}: {how}")
        return None
    diffs = [float(x.metrics[key]) - float(y.metrics[key]) for x, y in pairs]
    sign = stats.sign_test(diffs)
    agg, why = aggregate_of(ra + rb, key)
    if why and why not in notes:
        notes.append(why)
    labels = (a.label, b.label)
    pair = _per_example(labels, pairs, key, agg) or _over_seeds(labels, key, diffs, sign)
    pair.sign = sign
    pair.note = "; ".join(x for x in (pair.note, how) if x)
    return pair


def _pairs_of(groups: list[Group], baseline: str | None) -> list[tuple[Group, Group]]:
    if baseline is None:
        return [(a, b) for i, a in enumerate(groups) for b in groups[i + 1:]]
    labels = [g.label for g in groups]
    if baseline not in labels:
        raise ConfigError("--baseline", f"no group is labelled {baseline!r}{did_you_mean(baseline, labels)}; "
                          f"groups: {', '.join(labels)}")
    base = groups[labels.index(baseline)]
    return [(g, base) for g in groups if g is not base]


def build(groups: list[Group], metrics: list[str], baseline: str | None = None, use_bootstrap: bool = False,
          notes: list[str] | None = None) -> Report:
    """Every group's cells and every comparison, Holm-adjusted together (see the module docstring)."""
    notes = list(notes or [])
    cells = {(g.label, m): group_cell(g, m, use_bootstrap) for g in groups for m in metrics}
    for (label, m), cell in cells.items():
        if cell.est is None:
            notes.append(f"{label}: no run reports {m} (a missing cell)")
        elif cell.est.note and cell.est.low is None:
            notes.append(f"{label}, {m}: {cell.est.note}")
    pairs: list[Pair] = []
    for a, b in _pairs_of(groups, baseline):
        if not shared(a, b):
            notes.append(f"{a.label} vs {b.label}: not compared, different eval sets")
            continue
        pairs += [p for m in metrics if (p := compare(a, b, m, notes)) is not None]
    for p, adj in zip(pairs, stats.holm([p.p for p in pairs])):
        p.p_holm = adj
    return Report(groups, metrics, cells, pairs, notes, use_bootstrap)


__all__ = ["Cell", "Pair", "Report", "aggregate_of", "build", "compare", "group_cell", "metric_keys", "seed_pairs",
           "table"]
