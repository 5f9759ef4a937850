"""What a run shows and keeps of its evaluation: ``samples.jsonl`` and the console tables (the
held-out answers before and after, the metrics beside ``reftx baseline``'s where it ran)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reftx.eval.outcomes import example_ids
from reftx.runs.folder import RunFolder

console = Console(stderr=True)


def write_samples(out: RunFolder, examples: list, preds: list[str], before: list[str] | None = None) -> None:
    """samples.jsonl: per example its stable ``id`` (reftx.eval.outcomes.example_ids), prompt, gold and
    prediction ("after"), "before" where given, and, when ``preds`` carries them
    (reftx.eval.outcomes.Predictions), ``metrics``: every metric's value on it, keyed as in
    results.json, with ``aggregates`` naming the metric of any key not aggregated by the mean."""
    outcomes = getattr(preds, "outcomes", None)
    aggregates = getattr(preds, "aggregates", {})
    rows = []
    for i, (eid, ex) in enumerate(zip(example_ids(examples), examples)):
        rec = {"id": eid, "prompt": ex.prompt, "gold": str(ex.gold), "after": preds[i]}
        if before is not None and i < len(before):
            rec["before"] = before[i]
        if outcomes is not None:
            rec["metrics"] = outcomes[i]
            named = {k: aggregates[k] for k in outcomes[i] if k in aggregates}
            if named:
                rec["aggregates"] = named
        rows.append(rec)
    out.jsonl("samples.jsonl", rows)


def baseline_metrics(run_dir: Path, chash: str) -> dict[str, Any] | None:
    """The metrics ``reftx baseline`` wrote for this experiment (same config hash), if it ran."""
    path = run_dir / "baseline" / "results.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    return res.get("metrics") if res.get("config_hash") == chash else None


def report(results: dict[str, Any], shown: list, before: list[str] | None, after: list[str],
           baseline: dict[str, Any] | None = None) -> None:
    """The held-out answers (before and after) and the results table; ``baseline``: the base model's
    metrics on the same eval set, shown beside the trained model's."""
    if shown and after:
        table = Table(title="held-out prompts", show_lines=True)
        table.add_column("prompt", max_width=40)
        if before is not None:
            table.add_column("before", max_width=50)
        table.add_column("after", max_width=50)
        for i, ex in enumerate(shown):
            table.add_row(*map(escape, [ex.prompt, *([before[i]] if before is not None else []), after[i]]))
        console.print(table)
    table = Table(title=f"results: {results['name']} ({results['config_hash']})")
    table.add_column("metric")
    table.add_column("trained" if baseline else "value", justify="right")
    if baseline:
        table.add_column("base (reftx baseline)", justify="right")

    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    for k, v in results["metrics"].items():
        table.add_row(k, cell(v), *([cell(baseline.get(k, "-"))] if baseline else []))
    table.add_row("trainable parameters", f"{results['trainable_parameters']:,}", *(["0"] if baseline else []))
    table.add_row("wall time (s)", f"{results['wall_seconds']:.1f}", *([""] if baseline else []))
    console.print(table)


__all__ = ["baseline_metrics", "report", "write_samples"]
