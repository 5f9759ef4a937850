"""reftx/cli: --version and the help text of shared flags."""
from __future__ import annotations

import pytest

import reftx
import reftx.cli.commands as cli


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"reftx {reftx.__version__}\n"


def test_no_progress_help_describes_the_flag_not_the_default():
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    assert "--no-progress print no progress (default: bars on a terminal, else a plain line per logged step)" in text
