"""``reftx report RUNS_OR_SWEEPS... [--by KEY] [--metrics a,b] [--baseline LABEL] [--out DIR] [--bootstrap]``:
compare groups of runs over seeds and examples, and write the comparison as files.

What is read and how runs are grouped: reftx.runs.gather; what is computed: reftx.runs.compare (the
statistics: reftx.runs.stats). Written to a new folder (``--out``, default ``report`` or, for one
sweep folder, ``{sweep}/report``; when that already holds something, ``report-2``, ``report-3``, ...:
an earlier report is never overwritten):

  report.md     the groups table (mean ± 95% interval per metric, seeds, n, examples, trainable
                parameters, wall and CPU seconds), the paired comparisons (A − B, interval, test,
                p, Holm-adjusted p, the sign test over seeds, the minimum detectable effect) and notes
                (missing cells, refused intervals, pairs not compared and why)
  groups.csv    the groups table, one row per group and metric
  pairs.csv     the comparisons, one row per pair and metric
  metrics.png   each metric by group with its interval
  curves.png    training loss by step per group: the mean over seeds with a 95% t band (metrics.jsonl)
"""
from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reftx.core.errors import ReftError
from reftx.core.files import atomic_write
from reftx.runs import compare, gather, stats
from reftx.runs.compare import Report


def fmt(x: float | None, digits: int = 4) -> str:
    """A number for the tables: fixed decimals, or 3 significant digits when very large or small."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.{digits}f}"


def fmt_p(p: float) -> str:
    return "—" if math.isnan(p) else f"{p:.3g}"


def _cell_text(cell: compare.Cell) -> str:
    est = cell.est
    if est is None:
        return "—"
    if est.low is None:
        return f"{fmt(est.mean)} (no interval: {est.n} seed)"
    return f"{fmt(est.mean)} ± {fmt(est.half)}"


def _runs_column(runs: list[gather.Run], field: str) -> str:
    values = [r.results.get(field) for r in runs if isinstance(r.results.get(field), (int, float))]
    if not values:
        return "—"
    if field.startswith("trainable"):
        return f"{min(values):,}" if min(values) == max(values) else f"{min(values):,}–{max(values):,}"
    return f"{sum(values) / len(values):.1f}"


def _params(runs: list[gather.Run]) -> str:
    field = "trainable_parameters" if any("trainable_parameters" in r.results for r in runs) \
        else "trainable_parameters_per_slot"
    return _runs_column(runs, field)


def _examples(g: gather.Group) -> str:
    n = len(g.ids) or g.runs[0].results.get("n_eval") or g.runs[0].results.get("n_edits")
    return str(n) if n else "—"


def groups_markdown(rep: Report) -> list[str]:
    head = ["group", "seeds", "n", "examples", *rep.metrics, "trainable parameters", "wall s", "CPU s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in rep.groups:
        row = [g.label, ", ".join(map(str, g.seeds)), str(len(g.runs)), _examples(g),
               *(_cell_text(rep.cells[g.label, m]) for m in rep.metrics),
               _params(g.runs), _runs_column(g.runs, "wall_seconds"), _runs_column(g.runs, "cpu_seconds")]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |")
    return lines


def _sign_text(s: stats.SignTest | None) -> str:
    return "—" if s is None else f"{fmt_p(s.p)} (+{s.positive}/−{s.negative}/={s.ties})"


def pairs_markdown(rep: Report) -> list[str]:
    head = ["metric", "A", "B", "A − B", "95% interval", "test", "p", "p (Holm)", "sign test over seeds",
            "MDE (80% power)", "units"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in rep.pairs:
        interval = "—" if p.low is None else f"[{fmt(p.low)}, {fmt(p.high)}]"
        row = [p.metric, p.a, p.b, fmt(p.diff), interval, p.test, fmt_p(p.p), fmt_p(p.p_holm), _sign_text(p.sign),
               fmt(p.mde), p.units + (f"; {p.note}" if p.note else "")]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |")
    return lines


def markdown(rep: Report, command: str) -> str:
    how = ("two-level bootstrap over seeds × examples" if rep.bootstrap else "Student t over seeds")
    out = ["# reftx report", "", f"`{command}`", "",
           f"{sum(len(g.runs) for g in rep.groups)} runs in {len(rep.groups)} groups. Mean ± half-width of the "
           f"95% interval ({how}; B = {stats.B} resamples where bootstrapped).", "", *groups_markdown(rep), ""]
    if rep.pairs:
        out += ["## Paired comparisons (A − B)", "",
                f"p-values Holm-adjusted over the {len(rep.pairs)} comparisons below; MDE: the smallest difference "
                "a two-sided 5% test would detect with 80% power at the observed variance.", "",
                *pairs_markdown(rep), ""]
    if rep.notes:
        out += ["## Notes", "", *(f"- {n}" for n in rep.notes), ""]
    return "\n".join(out)


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def groups_csv(rep: Report) -> str:
    rows: list[list[Any]] = [["group", "metric", "mean", "low", "high", "n", "seeds", "examples", "note",
                              "trainable_parameters", "wall_seconds", "cpu_seconds"]]
    for g in rep.groups:
        for m in rep.metrics:
            est = rep.cells[g.label, m].est
            rows.append([g.label, m, *(["", "", "", 0] if est is None else [est.mean, est.low, est.high, est.n]),
                         " ".join(map(str, g.seeds)), _examples(g), "missing" if est is None else est.note,
                         _params(g.runs), _runs_column(g.runs, "wall_seconds"), _runs_column(g.runs, "cpu_seconds")])
    return _csv([[("" if v is None else v) for v in row] for row in rows])


def pairs_csv(rep: Report) -> str:
    rows: list[list[Any]] = [["metric", "a", "b", "diff", "low", "high", "test", "p", "p_holm", "sign_p",
                              "sign_positive", "sign_negative", "sign_ties", "mde", "units", "note"]]
    for p in rep.pairs:
        s = p.sign
        rows.append([p.metric, p.a, p.b, p.diff, p.low, p.high, p.test, p.p, p.p_holm,
                     *([s.p, s.positive, s.negative, s.ties] if s else ["", "", "", ""]), p.mde, p.units, p.note])
    return _csv([[("" if v is None else v) for v in row] for row in rows])


def free_dir(base: Path) -> Path:
    """``base`` when it does not exist or is empty, else the first ``base-2``, ``base-3``, ... that is
    free; created here (a new folder is claimed by mkdir, so two reports at once do not share it)."""
    k, folder = 1, Path(base)
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=folder.is_dir() and not any(folder.iterdir()))
            return folder
        except FileExistsError:
            k += 1
            folder = Path(base).with_name(f"{Path(base).name}-{k}")
        except OSError as e:
            raise ReftError(f"cannot create the report folder {folder}: {e.strerror or e}; choose another --out"
                            ) from None


def make_report(paths: list[str], by: list[str] | None = None, metrics: list[str] | None = None,
                baseline: str | None = None, out: str | None = None, use_bootstrap: bool = False,
                command: str = "reftx report", say: Callable[[str], Any] | None = None) -> Path:
    """Read, group, compare and write (see the module docstring); returns the folder written."""
    say = say or (lambda text: print(text, file=sys.stderr))
    runs, notes = gather.collect(paths)
    groups = gather.group_runs(runs, by)
    rep = compare.build(groups, compare.metric_keys(runs, metrics), baseline, use_bootstrap, notes)
    if out is None:
        one = Path(paths[0])
        out = str(one / "report") if len(paths) == 1 and (one / "sweep.json").is_file() else "report"
    folder = free_dir(Path(out))
    if folder != Path(out):
        say(f"{out} already holds a report; this one writes {folder}")
    for name, text in (("report.md", markdown(rep, command)), ("groups.csv", groups_csv(rep)),
                       ("pairs.csv", pairs_csv(rep))):
        atomic_write(folder / name, lambda p, t=text: Path(p).write_text(t), replace=False)
    from reftx.runs.report_plots import plot_curves, plot_metrics

    plot_metrics(rep, folder / "metrics.png")
    plot_curves(rep.groups, folder / "curves.png")
    for note in rep.notes:
        say(f"note: {note}")
    say(f"wrote {folder}")
    return folder


__all__ = ["fmt", "free_dir", "groups_csv", "make_report", "markdown", "pairs_csv"]
