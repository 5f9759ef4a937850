"""The old spelling of a command that moved to the ``reftx`` command line:

    python -m reftx.tasks tofu-finetune CONFIG [key=value ...]   # now: reftx tofu-finetune CONFIG [key=value ...]

TOFU's stage 1 trains and merges a model, which is a recipe's work (reftx/recipes/tofu_stage1.py),
not a task's. This alias says so and runs ``reftx tofu-finetune`` with the same arguments (same
exit status: 0, or 2 on an error) in a child process, so the zoo never imports the command line
(tests/unit/test_layers.py).
"""
from __future__ import annotations

import sys

MOVED = ("tofu-finetune",)


def main(argv: list[str] | None = None) -> int:
    """Run ``reftx <command> ...`` for a moved ``command`` (after a note on stderr); else print the usage."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in MOVED:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(f"note: `python -m reftx.tasks {args[0]}` is now `reftx {args[0]}`; running that", file=sys.stderr)
    import subprocess

    done = subprocess.run([sys.executable, "-m", "reftx.cli", *args], capture_output=True, text=True)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
