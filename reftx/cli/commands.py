"""The ``reftx`` command line: run, plan, validate, ls, eval, lm-eval, baseline, edit, tofu-finetune, push, adopt,
check."""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from reftx.cli.docgen import first_paragraph
from reftx.cli import launch
from reftx.cli import report as report_cli
from reftx.cli import serve as serve_cli
from reftx.cli import sweep as sweep_cli
from reftx.core.errors import ConfigError, ReftError

console = Console(stderr=True)
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _experiment(path: str, overrides: list[str]):
    from reftx.config.schema import load_experiment

    return load_experiment(path, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from reftx.recipes.registry import run_experiment
    from reftx.train.run import NonFiniteLoss

    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).is_dir():
        args.overrides, args.resume = [*args.overrides, args.resume], True  # `--resume train.lr=1e-3`: an override
    exp = _experiment(args.experiment, args.overrides)
    if args.num_processes != 1 or args.fsdp:  # this command in N processes, started by accelerate's launcher
        return launch.relaunch(launch.run_argv(args), args.num_processes, args.fsdp, exp)
    main = launch.speaker(exp)  # under a launcher the main process speaks for the run, the others only of errors
    try:
        run_experiment(exp, resume=args.resume, show_progress=not args.no_progress and main)
    except NonFiniteLoss as e:
        console.print(f"[red bold]stopped:[/] {escape(str(e))}", soft_wrap=True)
        return 3
    except KeyboardInterrupt as e:
        if getattr(e, "run_dir", None) and main:  # any number of processes resumes it
            again = shlex.join(["reftx", *launch.run_argv(args, resume=e.run_dir)])
            console.print(f"interrupted; continue with:\n  {escape(again)}", soft_wrap=True, highlight=False)
        return 130
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from reftx.recipes import registry as recipes, train as runner
    from reftx.config.hashing import config_hash
    from reftx.core.convert import dump_yaml

    exp = _experiment(args.experiment, args.overrides)
    groups = recipes.validate(exp)  # a mistake is the one line printed, before the config
    console.rule(f"[bold]{escape(str(exp.name))}  (config {config_hash(exp.to_dict())})")
    console.print(dump_yaml(exp.to_dict()), highlight=False, markup=False)
    console.print(runner.plan_table(groups, max_layers=10**9 if args.all else 8))
    return 0


def _expand(paths: list[str]) -> list[Path]:
    """Experiment files in ``paths`` (default experiments/), recursively, less sweeps/ (grids: reftx sweep --dry-run)."""
    dirs = [Path(p) for p in paths or [str(EXPERIMENTS)]]
    return [f for p in dirs for f in ([p] if not p.is_dir() else sorted(
        x for x in p.rglob("*.yaml") if "sweeps" not in x.relative_to(p).parts[:-1]))]


def cmd_validate(args: argparse.Namespace) -> int:
    from reftx.recipes import registry as recipes

    failed = 0
    for path in _expand(args.experiments):
        try:
            notices: list[str] = []
            groups = recipes.validate(_experiment(str(path), args.overrides), notices=notices)
            console.print(f"[green]ok[/]    {escape(str(path))}  ({len(groups)} groups, "
                          f"{sum(g.params for g in groups):,} parameters)", soft_wrap=True)
            for text in notices:  # prerequisites and offline facts: not errors
                console.print(f"      [yellow]notice:[/] {escape(text)}", soft_wrap=True)
        except (ReftError, ValueError) as e:
            failed += 1
            console.print(f"[red]error[/] {escape(str(path))}: {escape(str(e))}", soft_wrap=True)
    return 2 if failed else 0  # as every error of the command line


LISTS = ("interventions", "tasks", "metrics", "objectives", "recipes", "experiments")


def _first_line(text: str | None, width: int = 100) -> str:
    """The first sentence of a docstring's first paragraph, on one line (cut at ``width``)."""
    sentence = first_paragraph(text).split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= width else sentence[:width - 3] + "..."


def _registered(what: str) -> list[tuple[str, str]]:
    """(name, one-line description) of everything registered as ``what``."""
    if what == "interventions":
        from reftx.core.intervention import available_interventions, get_intervention

        return [(n, _first_line(get_intervention(n).__doc__)) for n in available_interventions()]
    if what == "tasks":
        from reftx.eval.task import TASKS

        return [(n, _first_line(TASKS.get(n).__doc__)) for n in TASKS.names()]
    if what == "objectives":
        from reftx.train.objectives import OBJECTIVES

        return [(n, _first_line(OBJECTIVES.get(n).__doc__)) for n in OBJECTIVES.names()]
    from reftx.recipes.registry import RECIPES

    return [(n, _first_line(RECIPES.get(n).doc)) for n in RECIPES.names()]


def cmd_ls(args: argparse.Namespace) -> int:
    if args.what == "metrics":
        from reftx.eval.metrics import METRICS

        for name in METRICS.names():
            m = METRICS.get(name)
            better = {True: "higher is better", False: "lower is better", None: "descriptive"}[m.higher_is_better]
            reported = f" (reported as {m.key})" if m.key != name else ""
            print(f"{name:26s} {better:17s} {(m.doc.splitlines() or [''])[0]}{reported}")
    elif args.what == "experiments":
        for path in _expand([]):
            print(path.relative_to(EXPERIMENTS.parent))
    else:
        for name, doc in _registered(args.what):
            print(f"{name:16s} {doc}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from reftx.recipes import train as runner

    results = runner.evaluate_run(args.run_dir, show_progress=not args.no_progress, overrides=args.overrides)
    for k, v in results["metrics"].items():  # rounded; the eval file keeps every digit
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


def _lm_eval_limit(limit: float | None) -> float | int | None:
    """``--limit`` checked in reftx's words before lm-eval sees it: a whole number of documents per
    task (>= 1), or a fraction of each task (0 < limit < 1)."""
    if limit is None:
        return None
    if not math.isfinite(limit) or limit <= 0 or (limit >= 1 and limit != int(limit)):
        raise ConfigError("--limit", f"must be a whole number of documents per task (>= 1) or a fraction of "
                                     f"each task (0 < limit < 1), got {limit:g}")
    return int(limit) if limit >= 1 else limit


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from reftx.recipes.lm_eval import evaluate_run

    limit = _lm_eval_limit(args.limit)
    if args.batch_size < 1:
        raise ConfigError("--batch-size", f"must be >= 1 (requests per forward), got {args.batch_size}")
    metrics, path = evaluate_run(args.run_dir, [t for t in args.tasks.split(",") if t], args.include_path, limit,
                                 args.batch_size, args.chat_template, show_progress=not args.no_progress)
    for k, v in metrics.items():  # rounded; the JSON keeps every digit
        print(f"{k}: {v:.4f}")
    console.print(f"wrote {path}", markup=False, soft_wrap=True)
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from reftx.recipes import train as runner

    runner.evaluate_base(_experiment(args.experiment, args.overrides), show_progress=not args.no_progress)
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from reftx.recipes.edit.run import demo, run_edit

    if args.experiment and (args.prompt or args.target):
        console.print("[red bold]error:[/] give an experiment file or --prompt/--target, not both")
        return 2
    if args.experiment:  # the edit recipe (an experiment naming no recipe is read as one)
        run_edit(_experiment(args.experiment, args.overrides), show_progress=not args.no_progress)
        return 0
    if not (args.prompt and args.target):
        console.print("[red bold]error:[/] reftx edit needs an experiment file, or --prompt and --target")
        return 2
    demo(args.model, args.prompt, args.target, args.rephrase, args.unrelated or [], args.kind, args.layer,
         args.rank, args.lr, args.steps, args.max_new_tokens)
    return 0


def cmd_tofu_finetune(args: argparse.Namespace) -> int:
    from reftx.recipes.tofu_stage1 import finetune

    out = finetune(_experiment(args.experiment, args.overrides), show_progress=not args.no_progress)
    print(f"merged model: {out}", file=sys.stderr)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from reftx.engine.model import CONFIG_NAME, WEIGHTS_NAME
    from reftx.models.hub import push_run

    info = push_run(args.run_dir, args.repo_id, (CONFIG_NAME, WEIGHTS_NAME), private=args.private or None,
                    commit_message=args.message)
    print(getattr(info, "commit_url", None) or f"pushed {args.run_dir} to {args.repo_id}")
    return 0


def _no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="print no progress (default: bars on a terminal, else a plain line per logged step)")


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    text = ("re-evaluate a finished run directory; writes a new {run_dir}/eval.json each time: eval-2.json, "
            "eval-3.json, ... once that name is taken, never replacing an earlier one (nor the run's results.json)")
    e = sub.add_parser("eval", help=text, description=text)
    e.add_argument("run_dir", help="the folder `reftx run` printed (holds config.yaml and intervention/)")
    e.add_argument("overrides", nargs="*", help="eval-only overrides, e.g. eval.max_new_tokens=64 task.n_eval=200 "
                                                "(eval.*, task.n_eval, task.eval_seed, task.eval_split, task.overlong)")
    _no_progress(e)
    e.set_defaults(fn=cmd_eval)


def _lm_eval_parser(sub: argparse._SubParsersAction) -> None:
    text = ("lm-evaluation-harness tasks on a finished run's trained model (needs reftx[lm-eval]); writes a new "
            "{run_dir}/lm_eval/{tasks}.json each time: {tasks}-2.json, {tasks}-3.json, ... once that name is "
            "taken, never replacing an earlier result")
    le = sub.add_parser("lm-eval", help=text, description=text)
    le.add_argument("run_dir", help="the folder `reftx run` printed (config.yaml and intervention/)")
    le.add_argument("--tasks", required=True, help="comma-separated lm-eval task names, e.g. arc_easy,hellaswag")
    le.add_argument("--include-path", help="a folder of lm-eval task YAMLs to add to lm-eval's own tasks")
    le.add_argument("--limit", type=float, help="at most N documents per task (a fraction of each task when < 1)")
    le.add_argument("--batch-size", type=int, default=8, help="requests per forward (default 8)")
    le.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                    help="format requests with the tokenizer's chat template (default: as the run did, "
                         "model.chat_template)")
    _no_progress(le)
    le.set_defaults(fn=cmd_lm_eval)


def _validate_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("validate", help="check experiment files (default: every file in experiments/) for what "
                                         "`reftx run` would meet, without weights; exit code 2 when any fails")
    v.add_argument("experiments", nargs="*", help="files or folders (searched recursively)")
    v.add_argument("--set", dest="overrides", action="append", default=[], help="an override for every file")
    v.set_defaults(fn=cmd_validate)


def _push_parser(sub: argparse._SubParsersAction) -> None:
    pu = sub.add_parser("push", help="upload a finished run's interventions to the Hugging Face Hub with a model card "
                                     "(base model, schedule, training data, metrics)")
    pu.add_argument("run_dir", help="a finished run folder (holds config.yaml, results.json and intervention/)")
    pu.add_argument("repo_id", help="the Hub model repo, user/name or org/name (created if missing)")
    pu.add_argument("--private", action="store_true", help="create the repo as private (an existing repo keeps its visibility)")
    pu.add_argument("--message", help="the commit message (default: Upload reftx interventions)")
    pu.set_defaults(fn=cmd_push)


def cmd_adopt(args: argparse.Namespace) -> int:
    from reftx.recipes.adopt import adopt

    exp = _experiment(args.experiment, args.overrides) if args.experiment else None
    if exp is None and args.overrides:
        raise ReftError("reftx adopt: overrides need an experiment file (reftx adopt FOLDER EXP.yaml key=value ...)")
    adopt(args.folder, exp, args.task, args.name, args.output_dir, show_progress=not args.no_progress)
    return 0


def _adopt_parser(sub: argparse._SubParsersAction) -> None:
    text = ("make a save_pretrained folder (Python or TRL path) a full run folder, so eval, lm-eval and push work "
            "on it: copies it to {run_dir}/intervention/, writes config.yaml (the folder's interventions in the "
            "experiment) and evaluates it into results.json")
    a = sub.add_parser("adopt", help=text, description=text)
    a.add_argument("folder", help="the folder model.save_pretrained(...) wrote (reft_config.json and weights)")
    a.add_argument("experiment", nargs="?", help="experiment YAML giving model, task and eval settings")
    a.add_argument("overrides", nargs="*", help="dotted overrides of the experiment")
    a.add_argument("--task", help="without an experiment: this task on the folder's base model")
    a.add_argument("--name", help="run name (default: the experiment's, or the folder's name)")
    a.add_argument("--output-dir", help="parent folder of the run (default: the experiment's output_dir, runs)")
    _no_progress(a)
    a.set_defaults(fn=cmd_adopt)


def cmd_check(args: argparse.Namespace) -> int:
    from reftx.testing import check

    return check(args.kinds, args.pytest_args)


def _check_parser(sub: argparse._SubParsersAction) -> None:
    text = ("run the contract suite (reftx.testing.contract) on registered primitives, e.g. your own: "
            "reftx --import my_variant.py check my_kind; exit 0 when every test passes (needs pytest)")
    c = sub.add_parser("check", help=text, description=text)
    c.add_argument("kinds", nargs="+", metavar="KIND", help="registered intervention kinds (see reftx ls interventions)")
    c.add_argument("--pytest", dest="pytest_args", action="append", default=[], metavar="ARG",
                   help="an extra pytest argument, e.g. --pytest=-x or --pytest=-k=save; repeatable")
    c.set_defaults(fn=cmd_check)


def _version() -> str:
    from reftx.core.version import __version__

    return __version__


def _edit_parser(sub: argparse._SubParsersAction) -> None:
    ed = sub.add_parser("edit", help="knowledge editing: an editing experiment, or one fact from the command line")
    ed.add_argument("experiment", nargs="?", help="editing experiment YAML (experiments/editing/)")
    ed.add_argument("overrides", nargs="*", help="dotted overrides, e.g. recipe.mode=sequential task.n_eval=100")
    ed.add_argument("--prompt", help='the fact\'s prompt, e.g. "The Eiffel Tower is located in the city of"')
    ed.add_argument("--target", help='the new answer, e.g. "Rome"')
    ed.add_argument("--rephrase", help="a rephrased prompt to show before and after")
    ed.add_argument("--unrelated", action="append", help="an unrelated prompt to show (repeatable)")
    ed.add_argument("--model", default="default", help="model name or path (default: SmolLM2-135M-Instruct)")
    ed.add_argument("--kind", default="loreft", help="intervention primitive (loreft, baft, ...)")
    ed.add_argument("--layer", type=int, help="edited layer (default: the middle one)")
    ed.add_argument("--rank", type=int, default=4, help="rank of the edit (default 4)")
    ed.add_argument("--lr", type=float, default=5e-3, help="learning rate (default 5e-3)")
    ed.add_argument("--steps", type=int, default=100, help="at most this many steps (stops at loss < 0.01)")
    ed.add_argument("--max-new-tokens", type=int, default=12, help="tokens generated before and after (default 12)")
    _no_progress(ed)
    ed.set_defaults(fn=cmd_edit)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reftx", description="Representation finetuning experiments.")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module (dotted name or .py file) for its registrations before the command; "
                        "repeatable (installed plugins, entry-point group reftx.plugins, load by themselves)")
    p.add_argument("--version", action="version", version=f"reftx {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and evaluate an experiment")
    r.add_argument("experiment", help="experiment YAML file")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 interventions.0.rank=8")
    r.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue a run from its latest checkpoint: RUN_DIR, or without it the newest unfinished "
                        "run of this experiment (with this config); a finished one is left as it is")
    launch.add_arguments(r)
    _no_progress(r)
    r.set_defaults(fn=cmd_run)
    pl = sub.add_parser("plan", help="print the resolved config and intervention groups; runs nothing")
    pl.add_argument("experiment", help="experiment YAML file")
    pl.add_argument("overrides", nargs="*", help="dotted overrides, as for run")
    pl.add_argument("--all", action="store_true", help="one row per group even when they span more than 8 layers")
    pl.set_defaults(fn=cmd_plan)
    _validate_parser(sub)
    ls = sub.add_parser("ls", help="list what is registered (or the shipped experiments)")
    ls.add_argument("what", choices=LISTS, help="what to list")
    ls.set_defaults(fn=cmd_ls)
    _eval_parser(sub)
    b = sub.add_parser("baseline", help="evaluate the experiment's model as it is (no training): the zero-shot "
                                        "baseline on the same eval set, or a saved checkpoint")
    b.add_argument("experiment", help="experiment YAML file")
    b.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.name=runs/tofu_finetune/model")
    _no_progress(b)
    b.set_defaults(fn=cmd_baseline)
    _lm_eval_parser(sub)
    _edit_parser(sub)
    tf = sub.add_parser("tofu-finetune", help="TOFU stage 1: train a lora {mode: only} experiment, then write the "
                                              "merged model as a HF checkpoint to {run_dir}/model")
    tf.add_argument("experiment", help="e.g. experiments/unlearning/tofu_finetune.yaml")
    tf.add_argument("overrides", nargs="*", help="dotted overrides, e.g. task.options.retain_authors=4")
    _no_progress(tf)
    tf.set_defaults(fn=cmd_tofu_finetune)
    _push_parser(sub)
    _adopt_parser(sub)
    _check_parser(sub)
    report_cli.add_parser(sub)
    sweep_cli.add_parser(sub)
    serve_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # dotted overrides may also follow an option (reftx run EXP --resume train.lr=1e-3)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.imports:
            from reftx.core.plugins import import_modules

            import_modules(args.imports, "--import")
        return args.fn(args)
    except (ReftError, ValueError) as e:
        console.print(f"[red bold]error:[/] {escape(str(e))}", soft_wrap=True)  # one line; [extras] kept
        return 2


if __name__ == "__main__":
    sys.exit(main())
