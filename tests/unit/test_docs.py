"""Documentation cannot drift: the config reference is regenerated and compared; the README keeps two commands."""
from __future__ import annotations

import re
from pathlib import Path

from reftx.docgen import config_reference

REPO = Path(__file__).resolve().parents[2]


def test_config_reference_is_current():
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == config_reference(), "docs/config.md is stale: run python -m reftx.docgen > docs/config.md"


def test_readme_has_exactly_the_two_fresh_machine_commands():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## On a fresh machine: the two commands\n\n```bash\n(.*?)```", readme, re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.split("#")[0].strip()]
    assert commands == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci


def test_readme_names_the_locked_versions():
    """The README's "Tested versions" sentence names exactly the versions in requirements.lock."""
    root = REPO
    lock = dict(line.split("==") for line in (root / "requirements.lock").read_text().splitlines()
                if line and not line.startswith("#"))
    text = (root / "README.md").read_text()
    para = text[text.index("**Tested versions.**"):].split("\n\n")[0]
    for pkg in ("torch", "transformers", "accelerate", "peft", "datasets", "safetensors", "tokenizers", "trl",
                "lm_eval", "tensorboard"):
        named = re.search(rf"\b{pkg} (\d+(?:\.\w+)*)", para)
        assert named and named.group(1) == lock[pkg], f"README says {pkg} {named and named.group(1)}, lock {lock[pkg]}"
