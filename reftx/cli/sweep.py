"""``reftx sweep``: the command line of reftx.recipes.sweep (dispatch only)."""
from __future__ import annotations

import argparse
import shlex
from typing import Any

from rich.console import Console
from rich.markup import escape

from reftx.core.errors import ConfigError

console = Console(stderr=True)
TEXT = ("run a grid of experiments, each cell an ordinary run folder in the sweep folder, indexed in its sweep.json; "
        "running it again resumes it (finished cells skipped by config hash, interrupted ones resumed)")


def _command(args: argparse.Namespace) -> str:
    """The command that runs (and resumes) this sweep, as the user would type it."""
    words = ["reftx", *(x for m in args.imports for x in ("--import", m)), "sweep", args.experiment, *args.overrides]
    for flag, value in (("--grid", args.grid), ("--out", args.out), ("--select", args.select), ("--on", args.on),
                        ("--threads", args.threads)):
        words += [flag, str(value)] if value is not None else []
    words += ["--then", *args.then] if args.then else []
    words += ["--then-zip"] * args.then_zip
    words += ["--jobs", str(args.jobs)] if args.jobs != 1 else []
    words += ["--executor", args.executor] if args.executor != "process" else []
    words += [x for o in args.executor_options for x in ("--executor-option", o)]
    return shlex.join(words + ["--fail-fast"] * args.fail_fast + ["--no-progress"] * args.no_progress)


def _check(args: argparse.Namespace) -> None:
    if args.jobs < 1:
        raise ConfigError("--jobs", f"is the number of cells run at once (>= 1), got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads", f"is the number of threads per cell process (>= 1), got {args.threads}")
    if args.executor != "process" and args.jobs != 1:
        raise ConfigError("--jobs", f"runs local processes; --executor {args.executor} runs every cell as a job "
                                    "(its scheduler decides how many at once): leave --jobs out")
    if args.executor_options and args.executor == "process":
        raise ConfigError("--executor-option", "sets submitit parameters: add --executor slurm (or local)")
    if args.dry_run and args.emit:
        raise ConfigError("--dry-run", "prints the cells; --emit commands prints their reftx run lines: give one")


def _emit(sw: Any, selecting: bool) -> int:
    from reftx.recipes import sweep, sweep_run

    lines = sweep_run.emit(sw)
    if lines:
        print("\n".join(lines))
    later = " (then rerun this --emit for the --then stage)" if selecting else ""
    console.print(f"{len(lines)} cell(s) to run, recorded in {escape(str(sw.folder / sweep.INDEX))}{later}",
                  soft_wrap=True, highlight=False)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from reftx.recipes import sweep, sweep_run
    from reftx.recipes.sweep_select import parse_select

    _check(args)
    command = _command(args)
    select = parse_select(args.select, args.on, args.then, args.then_zip)
    try:
        sw = sweep.plan(args.experiment, args.overrides, args.grid, select, args.out, args.imports, command)
        if args.dry_run:
            print("\n".join(sweep_run.dry_run(sw)))
            return 0
        if args.emit:
            return _emit(sw, select is not None)
        return sweep_run.run(sw, jobs=args.jobs, threads=args.threads, executor=args.executor,
                             options=args.executor_options, fail_fast=args.fail_fast,
                             show_progress=not args.no_progress and console.is_terminal)
    except KeyboardInterrupt:
        console.print(f"interrupted: every finished cell is kept; continue with:\n  {escape(command)}", soft_wrap=True,
                      highlight=False)
        return 130


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help=TEXT, description=TEXT)
    s.add_argument("experiment", help="experiment YAML file")
    s.add_argument("overrides", nargs="*", help="key=a,b,c comma lists (the cells are their product) or key=value "
                                                "(every cell); output_dir= and name= place the sweep folder")
    s.add_argument("--grid", help="a grid file: keys to value lists, zip: (keys that advance together), methods: "
                                  "(per-method blocks, each its own grid and experiment); see reftx.recipes.grid")
    s.add_argument("--out", help="the sweep folder (default {output_dir}/{name}-sweep; -sweep-2, ... for another sweep)")
    s.add_argument("--dry-run", action="store_true", help="print the cells, their config hashes and states; run nothing")
    s.add_argument("--emit", choices=["commands"], help="print one self-contained reftx run line per cell not done "
                                                        "(for a scheduler of your own); run nothing")
    s.add_argument("--jobs", type=int, default=1, help="cells at once, as local processes (default 1: in this process)")
    s.add_argument("--threads", type=int, help="threads per cell process with --jobs N (default: CPUs / N)")
    s.add_argument("--executor", choices=["process", "slurm", "local"], default="process",
                   help="process (default): here; slurm: a job array through submitit (reftx[sweep]); local: the same "
                        "through submitit's local executor")
    s.add_argument("--executor-option", dest="executor_options", action="append", default=[], metavar="KEY=VALUE",
                   help="a submitit parameter, e.g. timeout_min=60 or slurm_partition=gpu; repeatable")
    s.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell (default: run the others)")
    s.add_argument("--select", metavar='"METRIC max|min"', help="pick each method's best setting on --on, then run it "
                                                                 "with --then on the experiment's own eval split")
    s.add_argument("--on", metavar="SPLIT", help="the split --select compares on (default dev: set task.dev_size)")
    s.add_argument("--then", nargs="+", action="extend", default=[], metavar="KEY=A,B",
                   help="what runs with each chosen setting, e.g. seed=0,1,2 (several keys: their product)")
    s.add_argument("--then-zip", action="store_true",
                   help="the --then keys advance together, each with as many values, e.g. --then seed=0,1,2 "
                        "train.init_from=a,b,c --then-zip (seed 0 from a, 1 from b, 2 from c)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars inside cells (the cell lines stay)")
    s.set_defaults(fn=cmd_sweep)
