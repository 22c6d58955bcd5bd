"""``homeops doctor``: run every registered domain's checks and report them in a fixed order."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import typer

from homeops.core.cli.common import domain_context, json_errors, print_json, print_text

if TYPE_CHECKING:
    from homeops.core.registry import Registry


def run_doctor(
    ctx: typer.Context, registry: Registry, as_json: bool, only: list[str] | None
) -> int:
    """Run the checks and print the report; returns the exit code (0 ok, 3 a check failed)."""
    from homeops.core.health import exit_code_for, render_table, results_to_json, run_checks

    # A failed check is the report (exit 3), not an error: json_errors prints only for what
    # stops doctor before it has a report (settings, an unknown --only domain).
    with json_errors(as_json):
        dctx = domain_context(ctx)
        registry.check_domains(only or ())
        checks = registry.collect(dctx, only or ())
        results = asyncio.run(run_checks(checks))
        code = exit_code_for(results)
        if as_json:
            print_json(
                {"ok": int(code) == 0, "exit_code": int(code), "checks": results_to_json(results)}
            )
        else:
            print_text(render_table(results))
    return int(code)
