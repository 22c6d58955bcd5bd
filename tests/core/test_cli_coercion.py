"""The CLI's pydantic-free coercion of plain values gives what Typer's own coercion gives."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from homeops.cli import build_app
from homeops.core.cli import common

VALUES: list[Any] = [
    None, "", "0", "1", "5", "50", "007", " 5", "5 ", "+5", "-1", "1_000", "10000", "10001",
    "1024", "1025", "100", "101", "1e3", "abc", "\u0665", "9" * 30, 0, 1, 50, 10001, -3,
    True, False, 1.5, (), ("a",), ("a", "b"), ["x"], "x" * 30,
]  # fmt: skip


def _params(command: Any) -> list[Any]:
    found = [p for p in command.params if hasattr(p, "type_descriptor")]
    for sub in getattr(command, "commands", {}).values():
        found += _params(sub)
    return found


def test_typer_still_has_the_hook() -> None:
    # Without it _lazy_coercion does nothing and every --help pays ~100 ms of pydantic again.
    assert callable(getattr(typer.core, "build_runtime_param", None))


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_fast_values_match_typer(value: object) -> None:
    from typer._coercion import build_runtime_param  # the original, not the lazy wrapper

    for param in _params(typer.main.get_command(build_app())):
        fast = common._fast_value(param.type_descriptor, param, value)
        if fast is common._SLOW:
            continue
        expected = build_runtime_param(param.type_descriptor).coerce(value, param=param, ctx=None)
        assert (type(fast), fast) == (type(expected), expected), (param.name, value)
