"""Log files into labelled event sequences: the parsers, line texts, sessions, windows and leak-free
splits behind ``tasks/logs.py`` (loghub's HDFS and BGL; data: ``loghub/`` and ``loghub_deeplog_hdfs/``).

HDFS event ids. DeepLog's ``hdfs_train``/``hdfs_test_abnormal`` hold one block session per line as
event ids 1..29; they are loghub's ``E<id>`` of ``HDFS_templates.csv`` (``DEEPLOG_OFFSET`` = 0),
which the session structure confirms (tests/unit/tasks/test_logs.py checks it on the files): every
session holds id 22 (``allocateBlock``) exactly once, normal sessions then show the write pipeline
of a 3-replica block — ids 5 (``Receiving block``), 11 (``PacketResponder ... terminating``) and 9
(``Received block ... of size ... from``) about three times each, 26 (``addStoredBlock: blockMap
updated``) per replica, and the deletion pair 23 (``delete: ... added to invalidSet``) and 21
(``Deleting block``) in the same numbers. Matching the raw HDFS_2k lines to the templates
(``match_template``) gives the same seven most common events (E26, E11, E9, E5, E21, E23, E22; the
raw sample also has E30 "ask ... to delete", which DeepLog's ids never use); numbering shifted by
one would make the common events E6/E10/E12 ("Received block src", "PacketResponder Exception",
"Exception writing block"), rare in the raw log.
"""
from __future__ import annotations

import csv
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reftx.core.errors import DataError
from reftx.eval.task import read_text

DEEPLOG_OFFSET = 0  # DeepLog id k is loghub template E(k + DEEPLOG_OFFSET)
BLOCK = re.compile(r"blk_-?\d+")


def template_text(template: str) -> str:
    """A loghub template as plain text: the ``<*>`` slots dropped, spaces collapsed."""
    return " ".join(template.replace("<*>", " ").split())


_MASKS = (  # applied in order; each leaves a placeholder the later ones do not match
    (re.compile(r"blk_-?\d+"), "<blk>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"(?<![\w<])/[\w.\-/]+"), "<path>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"(?<![<\w])[\w.:\-]*\d[\w.:\-]*"), "<num>"),
)


def clean_message(text: str) -> str:
    """A raw log message with block ids, IPs, paths, hex values and any token holding a digit
    (numbers, node names, ids) masked: ``generating core.2275`` -> ``generating <num>``."""
    for pattern, mask in _MASKS:
        text = pattern.sub(mask, text)
    return " ".join(text.split())


def read_templates(path: Path) -> dict[str, str]:
    """EventId -> EventTemplate of a loghub ``*_templates.csv``."""
    rows = _csv(path, ("EventId", "EventTemplate"))
    return {r["EventId"]: r["EventTemplate"] for _, r in rows}


def _csv(path: Path, keys: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in keys if k not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}:1: missing column(s) {', '.join(missing)}")
        return [(i, row) for i, row in enumerate(reader, 2)]


def read_deeplog(path: Path) -> list[tuple[int, ...]]:
    """One session per non-empty line of space-separated event ids (DeepLog's HDFS files)."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    out = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(tuple(int(t) for t in line.split()))
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected space-separated event ids, got {line[:60]!r}") from None
    return out


@dataclass(frozen=True)
class LogLine:
    """One line of a raw log: its 1-based line number, alert label, message and loghub template."""

    lineno: int
    alert: bool
    message: str
    template: str


def read_bgl(log: Path, structured: Path) -> list[LogLine]:
    """BGL lines in file order: the label from the raw log's first token (``-`` = normal, anything
    else an alert category) and the message/template from loghub's structured CSV, which must list
    the same lines with the same labels."""
    if not log.is_file():
        raise DataError(f"data file not found: {log}")
    raw = log.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = _csv(structured, ("LineId", "Label", "Content", "EventTemplate"))
    if len(rows) != len(raw):
        raise DataError(f"{structured}: {len(rows)} rows but {log} has {len(raw)} lines")
    out = []
    for (csv_line, row), (lineno, line) in zip(rows, enumerate(raw, 1)):
        label = line.split(" ", 1)[0]
        if row["LineId"] != str(lineno) or row["Label"] != label:
            raise DataError(f"{structured}:{csv_line}: LineId {row['LineId']} / label {row['Label']!r} do not "
                            f"match {log}:{lineno} (label {label!r})")
        out.append(LogLine(lineno, label != "-", row["Content"], row["EventTemplate"]))
    return out


def hdfs_block_sessions(log: Path) -> dict[str, list[tuple[int, str]]]:
    """HDFS raw log lines grouped by block id (a line naming several blocks joins each session):
    block -> [(line number, message)], in file order. HDFS_2k has no labels; this is for the
    cleaned-message view and for checking the event-id mapping."""
    if not log.is_file():
        raise DataError(f"data file not found: {log}")
    sessions: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for lineno, line in enumerate(read_text(log).splitlines(), 1):
        parts = line.split(" ", 5)
        if len(parts) < 6:
            raise DataError(f"{log}:{lineno}: expected 'date time pid level component: message'")
        message = parts[5]
        for blk in dict.fromkeys(BLOCK.findall(message)):
            sessions[blk].append((lineno, message))
    return dict(sessions)


def match_template(message: str, templates: dict[str, str]) -> str | None:
    """The EventId whose template (``<*>`` = any text) matches the whole message; the most specific
    (longest fixed text) wins when several do. None when none matches."""
    best, best_len = None, -1
    for eid, tpl in templates.items():
        parts = [re.escape(p) for p in tpl.split("<*>")]
        if re.fullmatch(".*".join(parts), message, flags=re.S):
            fixed = len(tpl.replace("<*>", ""))
            if fixed > best_len:
                best, best_len = eid, fixed
    return best


# -- sequences ----------------------------------------------------------------------------------------
def collapse_repeats(events: Sequence[str]) -> list[str]:
    """Runs of one line become the line once with a count: [a, a, a, b] -> ["a (x3)", "b"]."""
    out: list[str] = []
    i = 0
    while i < len(events):
        j = i
        while j < len(events) and events[j] == events[i]:
            j += 1
        out.append(events[i] if j - i == 1 else f"{events[i]} (x{j - i})")
        i = j
    return out


COUNT = re.compile(r" \(x\d+\)$")


def without_counts(lines: Sequence[str]) -> tuple[str, ...]:
    """A sequence with its repeat counts removed: "(xN)" suffixes dropped and runs of one line
    collapsed, so ["a (x3)", "b"], ["a", "a", "b"] and ["a (x2)", "b"] are all ("a", "b")."""
    out: list[str] = []
    for line in lines:
        text = COUNT.sub("", line)
        if not out or out[-1] != text:
            out.append(text)
    return tuple(out)


def cut(events: Sequence[str], max_lines: int, long: str) -> list[list[str]]:
    """A session of lines as one or more sequences of at most ``max_lines``: ``truncate`` keeps the
    first ``max_lines``; ``chunk`` cuts it into consecutive pieces (the last may be shorter)."""
    if long == "truncate":
        return [list(events[:max_lines])]
    return [list(events[i:i + max_lines]) for i in range(0, len(events), max_lines)] or [[]]


@dataclass(frozen=True)
class Window:
    """Lines ``start`` .. ``end - 1`` (0-based, file order); anomalous if any line is an alert."""

    start: int
    end: int
    anomalous: bool


def windows(alerts: Sequence[bool], size: int, step: int, lo: int = 0, hi: int | None = None) -> list[Window]:
    """Every window of ``size`` lines starting at ``lo, lo + step, ...`` that ends by ``hi``
    (fixed windows: ``step == size``; sliding: ``step < size``). A shorter tail is dropped."""
    hi = len(alerts) if hi is None else hi
    return [Window(s, s + size, any(alerts[s:s + size])) for s in range(lo, hi - size + 1, step)]


def time_split(n_lines: int, test_fraction: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """(train, test) line ranges: the first ``1 - test_fraction`` of the log (in time) and the rest.
    Windows are built inside each range, so no line (and no window) is in both."""
    cut_at = round(n_lines * (1 - test_fraction))
    return (0, cut_at), (cut_at, n_lines)


def group_split(keys: Sequence[object], labels: Sequence[int], test_fraction: float, seed: int,
                duplicates: str) -> tuple[list[int], list[int]]:
    """Indices of (train, test) items, stratified by label. ``keys`` identify equal sequences:

    ``keep``: every item splits on its own (equal sequences may land on both sides);
    ``group``: equal sequences go to the same side (all copies kept);
    ``drop``: one item per distinct (sequence, label) is kept, the copies are dropped;
    ``drop_ignoring_counts``: the same (the caller passes keys with the counts removed:
    ``without_counts``).
    A seeded ``round(test_fraction * n)`` of each label's groups goes to test.
    """
    groups: dict[tuple[int, object], list[int]] = defaultdict(list)
    for i, (k, y) in enumerate(zip(keys, labels)):
        groups[(y, i if duplicates == "keep" else k)].append(i)
    rng = random.Random(f"split:{seed}")
    train: list[int] = []
    test: list[int] = []
    for y in sorted(set(labels)):
        gs = [g[:1] if duplicates.startswith("drop") else g for (gy, _), g in groups.items() if gy == y]
        rng.shuffle(gs)
        n_test = round(test_fraction * len(gs))
        test += [i for g in gs[:n_test] for i in g]
        train += [i for g in gs[n_test:] for i in g]
    return sorted(train), sorted(test)


def balance(indices: Iterable[int], labels: Sequence[int], seed: int) -> list[int]:
    """The indices with each class cut (seeded) to the size of the smallest class."""
    by: dict[int, list[int]] = defaultdict(list)
    for i in indices:
        by[labels[i]].append(i)
    n = min(len(v) for v in by.values())
    rng = random.Random(f"balance:{seed}")
    return sorted(i for v in by.values() for i in rng.sample(v, n))
