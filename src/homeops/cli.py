"""The umbrella command: ``homeops <group> ...``.

Only typer and the standard library are imported at start-up; each command imports what it
needs. ``homeops version`` skips typer altogether (it is what scripts call in loops).
"""

# No `from __future__ import annotations` here: Typer evaluates the nested commands'
# annotations in this module's globals, where `typer` is only a local of build_app.
import errno
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from homeops import __version__

if TYPE_CHECKING:
    import typer

    from homeops.core.health import Check
    from homeops.core.jobs.worker import Handler
    from homeops.core.registry import DomainContext, Registry

HELP = """One tool for a NixOS homelab: fleet deploys, builds and binary cache, service
backups, a Windows VM; with shared config, logging, jobs and health checks.

Exit codes: 0 ok, 1 operational failure, 2 usage/config error, 3 dependency unavailable,
4 timeout. Logs go to stderr as logfmt; stdout carries only the result (--json for JSON)."""


def _version_payload(as_json: bool) -> str:
    if as_json:
        import json
        import platform

        return json.dumps({"version": __version__, "python": platform.python_version()})
    return f"homeops {__version__}"


def build_registry() -> "Registry":
    """Every domain's doctor checks and remediations, in report order."""
    from homeops.core.registry import Registry

    registry = Registry()

    def core_checks(ctx: "DomainContext") -> "Sequence[Check]":
        from homeops.core.doctor import core_checks

        return core_checks(ctx)

    def core_handlers(ctx: "DomainContext") -> "Mapping[str, Handler]":
        from homeops.core.housekeeping import core_handlers

        return core_handlers(ctx)

    registry.add_checks("core", core_checks)
    registry.add_handlers("core", core_handlers)
    return registry


def build_app() -> "typer.Typer":
    """The Typer app with every command group mounted."""
    import typer

    from homeops.core.cli import artifacts_cmd, config_cmd, jobs_cmd
    from homeops.core.cli.common import JSON_HELP

    app = typer.Typer(
        name="homeops",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        # Rich-formatted help costs ~250 ms of imports on every --help; plain help is instant.
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _root(
        ctx: typer.Context,
        config: str = typer.Option(
            None,
            "--config",
            metavar="PATH",
            help="JSON config file (also accepted after the subcommand).",
        ),
        debug: bool = typer.Option(False, "--debug", help="Write debug log lines to stderr."),
    ) -> None:
        # Both are consumed by main() before Typer parses; declared here for --help.
        # Logging is set up here, not in main(), so `--help` never imports it.
        from homeops.core import logging as hlog
        from homeops.core.cli.common import REGISTRY_META, options

        del config, debug
        hlog.configure(debug=options(ctx).debug)
        ctx.meta[REGISTRY_META] = build_registry

    @app.command("version")
    def version(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
        """Print the homeops version."""
        sys.stdout.write(_version_payload(as_json) + "\n")

    @app.command("doctor")
    def doctor(
        ctx: typer.Context,
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
        only: list[str] = typer.Option(
            None, "--only", metavar="DOMAIN", help="Only this domain's checks (repeatable)."
        ),
    ) -> None:
        """Check the state dir, job store, tools and every domain's peers (exit 3 on failure)."""
        from homeops.core.cli.doctor_cmd import run_doctor

        code = run_doctor(ctx, build_registry(), as_json, only)
        raise typer.Exit(code)

    @app.command("supervise")
    def supervise(
        ctx: typer.Context,
        once: bool = typer.Option(False, "--once", help="One pass, then exit (3 if unhealthy)."),
        interval: str = typer.Option(
            None,
            "--interval",
            metavar="DURATION",
            help="Between passes. Default: supervisor.interval.",
        ),
        failpoint: str = typer.Option(
            None, "--failpoint", metavar="CHECK", help="Force this check to fail."
        ),
        only: list[str] = typer.Option(
            None, "--only", metavar="DOMAIN", help="Only this domain's checks (repeatable)."
        ),
        as_json: bool = typer.Option(False, "--json", help="One JSON line per pass."),
    ) -> None:
        """Check every interval and repair what fails, behind a circuit breaker."""
        from homeops.core.cli.supervise_cmd import run_supervise

        code = run_supervise(
            ctx,
            build_registry(),
            once=once,
            interval=interval,
            failpoint=failpoint,
            only=only,
            as_json=as_json,
        )
        raise typer.Exit(code)

    @jobs_cmd.app.command("worker")
    def worker(
        ctx: typer.Context,
        slots: int = typer.Option(
            None,
            "--slots",
            metavar="N",
            min=1,
            max=1024,
            help="Concurrent jobs. Default: jobs.slots.",
        ),
        drain: bool = typer.Option(
            False,
            "--drain",
            help="Exit once no job of the served types is queued, waiting to retry or running.",
        ),
        metrics: bool = typer.Option(
            False,
            "--metrics",
            help="Write metric=... lines every interval and on exit, to stdout or metrics.path.",
        ),
        metrics_interval: str = typer.Option(
            None, "--metrics-interval", metavar="DURATION", help="Default: metrics.interval."
        ),
        only: list[str] = typer.Option(
            None, "--only", metavar="DOMAIN", help="Only this domain's job types (repeatable)."
        ),
    ) -> None:
        """Run queued jobs of every registered type; SIGTERM finishes or requeues them."""
        from homeops.core.cli.worker_cmd import run_worker

        raise typer.Exit(
            run_worker(
                ctx,
                build_registry(),
                slots=slots,
                drain=drain,
                metrics=metrics,
                metrics_interval=metrics_interval,
                only=only,
            )
        )

    app.add_typer(config_cmd.app, name="config")
    app.add_typer(jobs_cmd.app, name="jobs")
    app.add_typer(artifacts_cmd.app, name="artifacts")
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``homeops`` console script."""
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    if code:
        sys.exit(code)


def _main(args: list[str]) -> int:
    if args in (["version"], ["version", "--json"], ["--version"]):
        if sys.stdout is None:
            sys.stderr.write("error: cannot write output: stdout is closed\n")
            return 1
        try:
            sys.stdout.write(_version_payload("--json" in args) + "\n")
            sys.stdout.flush()  # a full stdout fails here, not as a traceback at exit
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            sys.stderr.write(f"error: cannot write output to stdout: {exc.strerror or exc}\n")
            import os

            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the unwritable buffer is dropped
            return 1
        return 0
    from homeops.core.cli.common import run_app

    return run_app(build_app, args, prog_name="homeops")


if __name__ == "__main__":
    main()
