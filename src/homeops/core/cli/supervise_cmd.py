"""``homeops supervise``: the self-repair loop over every registered domain's checks."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import typer

from homeops.core.cli.common import (
    domain_context,
    duration_flag,
    json_errors,
    print_text,
    write_stdout,
)

if TYPE_CHECKING:
    from homeops.core.health import PassReport
    from homeops.core.registry import Registry


def run_supervise(
    ctx: typer.Context,
    registry: Registry,
    *,
    once: bool,
    interval: str | None,
    failpoint: str | None,
    only: list[str] | None,
    as_json: bool,
) -> int:
    """Run one pass (``--once``) or loop until SIGTERM/SIGINT; returns the exit code."""
    # --json is one document per line (one per pass), so a failure is one line too.
    with json_errors(as_json, one_line=True):
        return _supervise(
            ctx,
            registry,
            once=once,
            interval=interval,
            failpoint=failpoint,
            only=only,
            as_json=as_json,
        )


def _supervise(
    ctx: typer.Context,
    registry: Registry,
    *,
    once: bool,
    interval: str | None,
    failpoint: str | None,
    only: list[str] | None,
    as_json: bool,
) -> int:
    from homeops.core.cli.signals import install, log_signal
    from homeops.core.errors import ExitCode
    from homeops.core.health import CircuitBreaker, Supervisor, pass_to_json, render_pass

    dctx = domain_context(ctx)
    sup = dctx.core.supervisor
    interval_s = sup.interval if interval is None else duration_flag("--interval", interval)
    registry.check_domains(only or ())
    checks = registry.collect(dctx, only or ())

    def report(rep: PassReport) -> None:
        if not once and not rep.changed:
            return  # a long run prints what changed, not every tick
        if as_json:
            # One JSON document per line, so a long run can be piped into jq.
            write_stdout(json.dumps(pass_to_json(rep), default=str) + "\n")
        else:
            print_text(render_pass(rep))

    supervisor = Supervisor(
        checks,
        registry.collect_remediations(dctx, only or ()),
        interval_s=interval_s,
        breaker=CircuitBreaker(threshold=sup.breaker_threshold, cooldown_s=sup.breaker_cooldown),
        failpoint=failpoint if failpoint is not None else sup.failpoint,
        remediation_timeout_s=sup.remediation_timeout,
        on_pass=report,
    )

    async def main() -> int:
        if once:
            rep = await supervisor.run_once()
            return int(ExitCode.OK if rep.ok else ExitCode.UNAVAILABLE)
        stop = asyncio.Event()

        def on_signal(signum: int) -> None:
            if not stop.is_set():
                log_signal(signum, "stopping")
            stop.set()

        remove = install(on_signal)
        try:
            await supervisor.run(stop)
        finally:
            remove()
        return int(ExitCode.OK)

    return asyncio.run(main())
