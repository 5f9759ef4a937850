"""Running a planned sweep (reftx.recipes.sweep): the cells, the selection stage, progress, --emit, --dry-run.

Progress: one line per cell start and end (its place, folder name with the hash, wall time, headline
metric or error), plain text when stderr is not a terminal and coloured with a closing table when it
is; the same lines, timestamped, go to ``{sweep}/sweep.log``. Exit codes of :func:`run`: 0 when every
cell is done, 1 when a cell failed, is pending (--fail-fast) or runs elsewhere; Ctrl-C raises
KeyboardInterrupt after every cell it stopped is recorded as pending.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reftx.core.errors import ReftError
from reftx.recipes import sweep_exec as execs
from reftx.recipes.sweep import (INDEX, LOG, Cell, Sweep, cell_argv, command_line, folder_status, load_cell,
                                 read_index, record, results_of, then_items, update_index, upsert, validate_cell)
from reftx.recipes.sweep_select import choose, key_of

STYLE = {"done": "green", "failed": "red bold", "pending": "yellow", "running": "cyan", "start": "bold", "skip": "dim"}


class Progress:
    """Progress lines to stderr (rich on a terminal) and to the sweep's log file."""

    def __init__(self, folder: Path, total: int, console: Console | None = None, quiet: bool = False):
        self.log, self.total, self.quiet = Path(folder) / LOG, total, quiet
        self.console = console or Console(stderr=True)
        self.places: dict[str, int] = {}

    def line(self, word: str, cell: Cell, text: str) -> None:
        k = self.places.setdefault(cell.hash, len(self.places) + 1)
        plain = f"[{k}/{max(self.total, k)}] {word:<7} {cell.name}  {text}".rstrip()
        self.say(plain, STYLE.get(word, ""))

    def say(self, plain: str, style: str = "") -> None:
        if self.quiet:
            return
        if self.console.is_terminal:
            self.console.print(f"[{style}]{escape(plain)}[/]" if style else escape(plain), soft_wrap=True, highlight=False)
        else:
            self.console.print(plain, markup=False, highlight=False, soft_wrap=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {plain}\n")

    def ended(self, cell: Cell, rec: dict[str, Any], word: str | None = None) -> None:
        wall = f"{rec['wall_s']:.1f}s" if isinstance(rec.get("wall_s"), (int, float)) else "-"
        metric = (f"{rec['metric_name']} {rec['metric']:.4f}" if isinstance(rec.get("metric"), (int, float))
                  else rec.get("error") or "")
        self.line(word or rec["status"], cell, f"{wall}  {metric}".rstrip())

    def table(self, recs: list[dict[str, Any]]) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        t = Table("cell", "stage", "status", "wall (s)", "metric", title="reftx sweep")
        for r in recs:
            metric = f"{r['metric_name']} {r['metric']:.4f}" if isinstance(r.get("metric"), (int, float)) else ""
            wall = f"{r['wall_s']:.1f}" if isinstance(r.get("wall_s"), (int, float)) else ""
            t.add_row(escape(r["cell"]), r.get("stage", ""), f"[{STYLE.get(r['status'], '')}]{r['status']}[/]", wall,
                      escape(metric))
        self.console.print(t)


class Events:
    """What executors report: each start and end goes into sweep.json and the progress lines."""

    def __init__(self, sw: Sweep, progress: Progress):
        self.sw, self.progress = sw, progress
        self.metric = sw.select.metric if sw.select else None
        self.status: dict[str, str] = {}

    def start(self, cell: Cell, job_id: str | None = None) -> None:
        extra = {"job_id": job_id} if job_id else {}
        update_index(self.sw.folder, lambda d: upsert(d, record(cell, "running", metric_name=self.metric, **extra)))
        self.progress.line("start", cell, cell.label)

    def end(self, cell: Cell, status: str, wall: float | None, error: str | None) -> None:
        rec = record(cell, status, wall, error, self.metric)
        update_index(self.sw.folder, lambda d: upsert(d, rec))
        self.status[cell.hash] = status
        self.progress.ended(cell, rec)


def _prepare(sw: Sweep, cells: list[Cell], events: Events) -> list[tuple[Cell, Any]]:
    """Record every cell's state from its folder (a failed one stays failed until it runs again);
    the cells to run now, each with what it resumes."""
    recorded = {c.get("hash"): c for c in (read_index(sw.folder) or {}).get("cells", [])}
    todo, recs = [], []
    for cell in cells:
        status, resume = folder_status(cell)
        before = recorded.get(cell.hash, {})
        if status == "pending" and before.get("status") == "failed":
            status = "failed"
        rec = record(cell, status, before.get("wall_s"), before.get("error") if status == "failed" else None,
                     events.metric)
        recs.append(rec)
        events.status[cell.hash] = status
        if status in ("pending", "failed"):
            todo.append((cell, resume))
        else:
            events.progress.ended(cell, rec, "skip" if status == "done" else "running")

    def change(data: dict[str, Any]) -> None:
        data.update({"experiment": str(sw.experiment), "command": sw.command, "key": sw.key,
                     "select": sw.select.to_dict() if sw.select else None})
        for rec in recs:
            upsert(data, rec)
    update_index(sw.folder, change)
    return todo


def _execute(sw: Sweep, todo: list, events: Events, opts: dict[str, Any]) -> bool:
    jobs, executor = opts.get("jobs", 1), opts.get("executor", "process")
    threads = execs.threads_per_job(jobs, opts.get("threads"))
    if executor in ("slurm", "local"):
        def job_args(cell: Cell, resume: Any) -> tuple:
            return (str(cell.experiment), [*cell.overrides, f"name={cell.name}", f"output_dir={sw.folder}"],
                    str(resume) if resume else None, list(sw.imports))
        return execs.run_submitit(todo, events, opts.get("fail_fast", False), opts["submitit"], threads, job_args)
    if jobs > 1:
        return execs.run_processes(todo, events, opts.get("fail_fast", False), jobs, threads,
                                   lambda c, r: cell_argv(sw, c, r), sw.folder / "logs")
    return execs.run_inline(todo, events, opts.get("fail_fast", False), opts.get("show_progress", False))


def selection(sw: Sweep) -> tuple[dict[str, Any], list[Cell]] | None:
    """Each method's chosen setting and the --then cells, once every stage-1 cell has ended (else None)."""
    sel, entries = sw.select, []
    failed = {c.get("hash") for c in (read_index(sw.folder) or {}).get("cells", []) if c.get("status") == "failed"}
    for cell in sw.cells:
        status, _ = folder_status(cell)
        if status in ("pending", "running"):
            if status == "running" or cell.hash not in failed:
                return None
            status = "failed"
        value = None
        if status == "done":
            metrics = (results_of(cell) or {}).get("metrics") or {}
            if sel.metric not in metrics:
                raise ReftError(f"{cell.run_dir / 'results.json'} has no metric {sel.metric!r} (it has "
                                f"{', '.join(metrics) or 'none'}): --select one of those")
            value = metrics[sel.metric]
        entries.append((cell, status, value))
    then_keys = {key_of(i) for axis in sw.then_axes for option in axis for i in option}
    chosen = choose(entries, sel, then_keys)
    cells = []
    for method, c in chosen.items():
        if c["chosen"] is None:
            continue
        mine = [load_cell(Path(c["experiment"]), [*c["chosen"], *items], method, "then", {}).placed(sw.folder)
                for items in then_items(sw.then_axes)]
        for cell, items in zip(mine, then_items(sw.then_axes)):
            cell.label = " ".join(items)
        c["then_cells"] = [cell.hash for cell in mine]
        cells += mine
    return {**sel.to_dict(), "methods": chosen}, cells


def _then_stage(sw: Sweep, events: Events, opts: dict[str, Any]) -> bool | None:
    """Choose and run the --then cells; None when stage 1 is not over (cells running elsewhere)."""
    chosen = selection(sw)
    if chosen is None:
        events.progress.say("selection waits: some stage-1 cells are still running elsewhere; rerun the sweep "
                            "when they end", "yellow")
        return None
    record_, cells = chosen
    cache: dict[str, Any] = {}
    for cell in cells:
        validate_cell(cell, cache)
    update_index(sw.folder, lambda d: d.update(selection=record_))
    for method, c in record_["methods"].items():
        picked = " ".join(c["chosen"]) if c["chosen"] is not None else "nothing"
        events.progress.say(f"selected for {method}: {picked} ({c['reason']})", "bold")
    events.progress.total += len(cells)
    return _execute(sw, _prepare(sw, cells, events), events, opts)


def run(sw: Sweep, **opts: Any) -> int:
    """Run the sweep (options: jobs, threads, executor, options, fail_fast, show_progress, console);
    returns the exit code (module docstring)."""
    if opts.get("executor") in ("slurm", "local"):  # a missing cluster or a bad option fails before anything is written
        opts["submitit"] = execs.make_executor(opts["executor"], sw.folder / "submitit", list(opts.get("options", ())))
    progress = Progress(sw.folder, len(sw.cells), opts.get("console"))
    events = Events(sw, progress)
    progress.say(f"reftx sweep: {len(sw.cells)} cells in {sw.folder}")
    ok = _execute(sw, _prepare(sw, sw.cells, events), events, opts)
    if ok and sw.select is not None:
        ok = bool(_then_stage(sw, events, opts))
    recs = (read_index(sw.folder) or {}).get("cells", [])
    counts = {s: sum(r.get("status") == s for r in recs) for s in ("done", "failed", "pending", "running")}
    progress.table(recs)
    progress.say(f"sweep {sw.folder}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" ({INDEX})")
    return 0 if ok and counts["done"] == len(recs) else 1


def emit(sw: Sweep) -> list[str]:
    """``reftx run`` lines of the cells not done (recorded in sweep.json as pending); with --select,
    the --then cells too once every stage-1 cell has ended."""
    events = Events(sw, Progress(sw.folder, len(sw.cells), quiet=True))
    lines = [command_line(sw, c, r) for c, r in _prepare(sw, sw.cells, events)]
    if sw.select is not None and not lines and (chosen := selection(sw)) is not None:
        update_index(sw.folder, lambda d: d.update(selection=chosen[0]))
        lines = [command_line(sw, c, r) for c, r in _prepare(sw, chosen[1], events)]
    return lines


def dry_run(sw: Sweep) -> list[str]:
    """One line per cell (place, status, hash, folder, what sets it apart); writes nothing."""
    recorded = {c.get("hash"): c.get("status") for c in (read_index(sw.folder) or {}).get("cells", [])}
    out = [f"sweep {sw.folder} ({len(sw.cells)} cells)"]
    for k, cell in enumerate(sw.cells, 1):
        status, _ = folder_status(cell)
        status = "failed" if status == "pending" and recorded.get(cell.hash) == "failed" else status
        out.append(f"{k:>3}  {status:<8} {cell.hash}  {cell.name}  {cell.label}")
    if sw.select is not None:
        sel, n = sw.select, len(then_items(sw.then_axes))
        out.append(f"then: per method, the setting with the {'highest' if sel.direction == 'max' else 'lowest'} mean "
                   f"{sel.metric} on {sel.on}, run {n} time(s) ({' '.join(sel.then)}) on the experiment's own eval split")
    return out


__all__ = ["Events", "Progress", "dry_run", "emit", "run", "selection"]
