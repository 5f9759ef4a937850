"""Commands of the task zoo besides ``reftx run``:

    python -m reftx.tasks tofu-finetune CONFIG [key=value ...]   # TOFU stage 1: train, then a merged HF checkpoint

To evaluate a model as it is (a hub id, or a checkpoint such as stage 1's), use ``reftx baseline
CONFIG`` (reftx.runner.evaluate_base).
"""
from __future__ import annotations

import sys

from reftx.errors import ReftError


def main(argv: list[str] | None = None) -> int:
    from .tofu_finetune import main as tofu_finetune

    commands = {"tofu-finetune": tofu_finetune}
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        return commands[args[0]](args[1:])
    except ReftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
