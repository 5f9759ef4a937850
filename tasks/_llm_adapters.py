"""Reading the LLM-Adapters data format (Hu et al. 2023, AGI-Edgerunners/LLM-Adapters), shared by the
math and commonsense tasks.

A file is one JSON array of records ``{"instruction", "input", "output", "answer"}``:
``instruction`` holds the question (with its answer options for multiple choice), ``input`` is
empty in every shipped file, ``output`` is a worked solution (math_data.json), the model answer of
the LLM-Adapters authors (math test files; never trained on here), or "the correct answer is X"
(commonsense), and ``answer`` is the gold answer ("4.0", "A", "true", "answer3", ...).

The same records can come from the Hub: ``hub_id`` names a ``datasets`` repository with these
columns, loaded with ``datasets.load_dataset(hub_id, split=...)`` (needs a network).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reftx.core.errors import DataError

from .tofu import read_records

Template = Literal["plain", "alpaca"]

# The Alpaca prompt LLM-Adapters and the ReFT paper use for LLaMA (no chat template).
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                "{instruction}\n\n### Input:\n{input}\n\n### Response:\n")


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str
    answer: str
    file: str
    line: int  # line of the record's opening brace (1-based); 0 for Hub rows
    index: int  # position in the file (or Hub split)

    def prompt(self, template: Template) -> str:
        """The prompt text: ``plain`` is the instruction (and the input after a blank line, if any);
        ``alpaca`` wraps them in the Alpaca template."""
        if template == "alpaca":
            return (ALPACA_INPUT if self.input else ALPACA).format(instruction=self.instruction, input=self.input)
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


def _record(rec: object, where: str, file: str, line: int, index: int) -> Record:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    bad = [k for k in ("instruction", "answer") if not isinstance(rec.get(k), str) or not rec[k].strip()]
    bad += [k for k in ("input", "output") if not isinstance(rec.get(k, ""), str)]
    if bad:
        raise DataError(f"{where}: missing, empty or non-string field(s) {', '.join(bad)}")
    return Record(rec["instruction"], rec.get("input", ""), rec.get("output", ""), rec["answer"].strip(),
                  file, line, index)


def read_file(path: Path) -> list[Record]:
    """Every record of an LLM-Adapters JSON file; a malformed record raises DataError naming file:line."""
    return [_record(rec, f"{path}:{line} (record {index})", path.name, line, index)
            for line, index, rec in read_records(path)]


def read_hub(hub_id: str, split: str) -> list[Record]:
    """The records of a Hub dataset split with the LLM-Adapters columns (DataError when unreachable)."""
    import datasets

    try:
        rows = datasets.load_dataset(hub_id, split=split)
    except Exception as e:  # offline (ConnectionError), unknown id, missing split...
        raise DataError(f"cannot load {hub_id!r} (split {split!r}) from the Hugging Face Hub: {e}. Offline, "
                        "leave hub_id empty and use the local files (task.data_dir or $REFTX_DATA)") from None
    return [_record(rec, f"{hub_id}[{split}] row {i}", hub_id, 0, i) for i, rec in enumerate(rows)]


__all__ = ["ALPACA", "ALPACA_INPUT", "Record", "Template", "read_file", "read_hub"]
