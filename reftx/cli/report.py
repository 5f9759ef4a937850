"""``reftx report``: the command line of reftx.runs.report (compare runs over seeds and examples)."""
from __future__ import annotations

import argparse
import shlex


def _list(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list without empty items, got {text!r}")
    return items


def cmd_report(args: argparse.Namespace) -> int:
    from reftx.runs.report import make_report

    command = shlex.join(["reftx", "report", *args.paths, *(["--by", ",".join(args.by)] if args.by else []),
                          *(["--metrics", ",".join(args.metrics)] if args.metrics else []),
                          *(["--baseline", args.baseline] if args.baseline else []),
                          *(["--bootstrap"] if args.bootstrap else [])])
    make_report(args.paths, args.by, args.metrics, args.baseline, args.out, args.bootstrap, command)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    text = ("compare runs over seeds and examples: a markdown table, CSVs and plots with 95% intervals, paired tests "
            "(McNemar, paired bootstrap, sign test over seeds; Holm-adjusted) and the minimum detectable effect")
    r = sub.add_parser("report", help=text.replace("%", "%%"), description=text)
    r.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP",
                   help="run folders, sweep folders (sweep.json) or folders of run folders")
    r.add_argument("--by", type=_list, metavar="KEY[,KEY]",
                   help="group by dotted config keys (train.lr, interventions.0.kind) or method (a sweep cell's method label, else the intervention kinds) / name; default: "
                        "runs that differ only in seed form a group")
    r.add_argument("--metrics", type=_list, metavar="A,B", help="the metrics to report (default: every one reported)")
    r.add_argument("--baseline", metavar="LABEL", help="compare every group with this group only (default: every pair)")
    r.add_argument("--out", metavar="DIR", help="the report folder (default: report, or SWEEP/report for one sweep); "
                                                "one that holds a report is kept and DIR-2, ... is written")
    r.add_argument("--bootstrap", action="store_true",
                   help="intervals of group means by a bootstrap over seeds x examples instead of t over seeds")
    r.set_defaults(fn=cmd_report)
