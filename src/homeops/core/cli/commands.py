"""The core's commands as factories, so the umbrella and every seed tool build the same ones.

``homeops doctor`` runs every domain's checks and takes ``--only``; ``win-automation
doctor`` is the same command preset to its domain (and the core), without ``--only``.
Options shared by several commands are declared here once.
"""

# No `from __future__ import annotations`: Typer evaluates the nested commands' annotations
# in this module's globals, where they must be real objects.
from collections.abc import Sequence
from typing import Any

import typer

from homeops.core.cli.common import JSON_HELP, registry_of


def only_option(what: str) -> Any:  # noqa: ANN401 - a typer.Option default
    """``--only DOMAIN`` (repeatable), selecting whose ``what`` a command uses."""
    return typer.Option(
        None, "--only", metavar="DOMAIN", help=f"Only this domain's {what} (repeatable)."
    )


def json_option(help_text: str = JSON_HELP) -> Any:  # noqa: ANN401 - a typer.Option default
    """``--json``."""
    return typer.Option(False, "--json", help=help_text)


ONLY_CHECKS = only_option("checks")
ONLY_JOB_TYPES = only_option("job types")


def _domains(preset: Sequence[str] | None, only: list[str] | None) -> list[str] | None:
    return list(preset) if preset is not None else only


DOCTOR_HELP = "Check the state dir, job store, tools and every domain's peers (exit 3 on failure)."


def add_doctor(app: typer.Typer, *, preset: Sequence[str] | None = None) -> None:
    """Add ``doctor``; with ``preset``, only those domains' checks and no ``--only``."""

    def run(ctx: typer.Context, as_json: bool, only: list[str] | None) -> None:
        from homeops.core.cli.doctor_cmd import run_doctor

        raise typer.Exit(run_doctor(ctx, registry_of(ctx), as_json, _domains(preset, only)))

    if preset is None:

        @app.command("doctor", help=DOCTOR_HELP)
        def doctor(
            ctx: typer.Context,
            as_json: bool = json_option(),
            only: list[str] = ONLY_CHECKS,
        ) -> None:
            run(ctx, as_json, only)

    else:

        @app.command("doctor", help=DOCTOR_HELP)
        def doctor_preset(ctx: typer.Context, as_json: bool = json_option()) -> None:
            run(ctx, as_json, None)


SUPERVISE_HELP = "Check every interval and repair what fails, behind a circuit breaker."


def add_supervise(
    app: typer.Typer, *, name: str = "supervise", preset: Sequence[str] | None = None
) -> None:
    """Add the supervisor loop as ``name`` (the seeds call it ``supervisor run``)."""

    def run(
        ctx: typer.Context,
        once: bool,
        interval: str | None,
        failpoint: str | None,
        only: list[str] | None,
        as_json: bool,
    ) -> None:
        from homeops.core.cli.supervise_cmd import run_supervise

        code = run_supervise(
            ctx,
            registry_of(ctx),
            once=once,
            interval=interval,
            failpoint=failpoint,
            only=_domains(preset, only),
            as_json=as_json,
        )
        raise typer.Exit(code)

    once_opt = typer.Option(False, "--once", help="One pass, then exit (3 if unhealthy).")
    interval_opt = typer.Option(
        None,
        "--interval",
        metavar="DURATION",
        help="Between passes. Default: supervisor.interval.",
    )
    failpoint_opt = typer.Option(
        None, "--failpoint", metavar="CHECK", help="Force this check to fail."
    )
    json_opt = json_option("One JSON line per pass.")

    if preset is None:

        @app.command(name, help=SUPERVISE_HELP)
        def supervise(
            ctx: typer.Context,
            once: bool = once_opt,
            interval: str = interval_opt,
            failpoint: str = failpoint_opt,
            only: list[str] = ONLY_CHECKS,
            as_json: bool = json_opt,
        ) -> None:
            run(ctx, once, interval, failpoint, only, as_json)

    else:

        @app.command(name, help=SUPERVISE_HELP)
        def supervise_preset(
            ctx: typer.Context,
            once: bool = once_opt,
            interval: str = interval_opt,
            failpoint: str = failpoint_opt,
            as_json: bool = json_opt,
        ) -> None:
            run(ctx, once, interval, failpoint, None, as_json)


WORKER_HELP = "Run queued jobs of every registered type; SIGTERM finishes or requeues them."


def add_worker(app: typer.Typer, *, preset: Sequence[str] | None = None) -> None:
    """Add ``worker``; a seed tool's also takes the seeds' ``--concurrency`` for ``--slots``."""

    def run(
        ctx: typer.Context,
        slots: int | None,
        drain: bool,
        metrics: bool,
        metrics_interval: str | None,
        only: list[str] | None,
    ) -> None:
        from homeops.core.cli.worker_cmd import run_worker

        raise typer.Exit(
            run_worker(
                ctx,
                registry_of(ctx),
                slots=slots,
                drain=drain,
                metrics=metrics,
                metrics_interval=metrics_interval,
                only=_domains(preset, only),
            )
        )

    # The seeds call it --concurrency; the umbrella keeps one name so its errors read simply.
    slot_names = ("--slots",) if preset is None else ("--concurrency", "--slots")
    slots_opt = typer.Option(
        None,
        *slot_names,
        metavar="N",
        min=1,
        max=1024,
        help="Concurrent jobs. Default: jobs.slots.",
    )
    drain_opt = typer.Option(
        False,
        "--drain",
        help="Exit once no job of the served types is queued, waiting to retry or running.",
    )
    metrics_opt = typer.Option(
        False,
        "--metrics",
        help="Write metric=... lines every interval and on exit, to stdout or metrics.path.",
    )
    interval_opt = typer.Option(
        None, "--metrics-interval", metavar="DURATION", help="Default: metrics.interval."
    )

    if preset is None:

        @app.command("worker", help=WORKER_HELP)
        def worker(
            ctx: typer.Context,
            slots: int = slots_opt,
            drain: bool = drain_opt,
            metrics: bool = metrics_opt,
            metrics_interval: str = interval_opt,
            only: list[str] = ONLY_JOB_TYPES,
        ) -> None:
            run(ctx, slots, drain, metrics, metrics_interval, only)

    else:

        @app.command("worker", help=WORKER_HELP)
        def worker_preset(
            ctx: typer.Context,
            slots: int = slots_opt,
            drain: bool = drain_opt,
            metrics: bool = metrics_opt,
            metrics_interval: str = interval_opt,
        ) -> None:
            run(ctx, slots, drain, metrics, metrics_interval, None)


def _copy_group(template: typer.Typer) -> typer.Typer:
    # The command modules keep one Typer each; a fresh group per app keeps two apps built
    # in one process (the umbrella and a seed tool, or a test building the app twice)
    # from registering their extra commands on the same shared object.
    group = typer.Typer(help=template.info.help, no_args_is_help=True)
    group.registered_commands.extend(template.registered_commands)
    group.registered_groups.extend(template.registered_groups)
    return group


def jobs_group(*, worker_preset: Sequence[str] | None = None, worker: bool = True) -> typer.Typer:
    """``jobs list|status|cancel|enqueue|check|...``, plus ``worker`` unless ``worker=False``.

    A domain that adds its own ``enqueue`` form builds on this group.
    """
    from homeops.core.cli import jobs_cmd

    group = _copy_group(jobs_cmd.app)
    if worker:
        add_worker(group, preset=worker_preset)
    return group


def artifacts_group() -> typer.Typer:
    """``artifacts list|fetch|sweep``."""
    from homeops.core.cli import artifacts_cmd

    return _copy_group(artifacts_cmd.app)


def config_group() -> typer.Typer:
    """``config show``."""
    from homeops.core.cli import config_cmd

    return _copy_group(config_cmd.app)
