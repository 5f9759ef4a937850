"""reftx/core/registry.py: re-registering the same definition (a re-run notebook cell) replaces the
entry quietly; a different definition under a taken name is an error unless replace=True; the
README's "Adding a primitive" snippet runs twice in one process."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from reftx.core.intervention import INTERVENTIONS
from reftx.core.registry import Registry, origin

README = Path(__file__).resolve().parents[3] / "README.md"


def _cell(source: str) -> dict:
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<notebook cell>", "exec"), namespace)
    return namespace


def test_a_rerun_cell_replaces_quietly_and_another_definition_is_refused():
    reg: Registry[type] = Registry("widget")
    first = _cell("class Widget: pass")["Widget"]
    reg.register("widget")(first)
    second = _cell("class Widget: pass")["Widget"]  # the same cell, run again: a new class object
    assert first is not second and origin(first) == origin(second) == ("__main__", "Widget")
    reg.register("widget")(second)
    assert reg.get("widget") is second
    other = _cell("class Gadget: pass")["Gadget"]
    with pytest.raises(ValueError, match=re.escape(
            f"widget 'widget' is already registered by {second!r} (from __main__); choose another name, "
            "or pass replace=True to replace it")):
        reg.register("widget")(other)
    assert reg.get("widget") is second
    reg.register("widget", replace=True)(other)
    assert reg.get("widget") is other


def test_the_readme_primitive_snippet_runs_twice_and_refuses_a_taken_name():
    text = README.read_text()
    snippet = text.split("## Adding a primitive", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 'register_primitive("my_loreft"' in snippet
    try:
        first = _cell(snippet) and INTERVENTIONS.get("my_loreft")
        _cell(snippet)
        second = INTERVENTIONS.get("my_loreft")
        assert first is not second and origin(second) == ("__main__", "my_loreft")
        shipped = INTERVENTIONS.get("loreft")
        with pytest.raises(ValueError, match=re.escape(
                "intervention 'loreft' is already registered by <primitive 'loreft' (reftx.methods.loreft)> "
                "(from reftx.methods.loreft); choose another name, or pass replace=True to replace it")):
            _cell(snippet.replace('"my_loreft"', '"loreft"'))
        assert INTERVENTIONS.get("loreft") is shipped
    finally:
        INTERVENTIONS._items.pop("my_loreft", None)
