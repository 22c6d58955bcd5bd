"""The umbrella command ``homeops <group> ...``, and every seed tool named after its domain.

The domain records below are the one list of what homeops is made of. Each record names
the domain's settings, its Typer sub-app (mounted as ``homeops <group>``), its seed tool
names, its checks and its job types, all as lazy factories. A seed tool (``win-automation``)
is one line in ``[project.scripts]`` pointing at :func:`main` plus its record's ``aliases``:
:func:`main` picks the program from the name it was started as.

Only typer and the standard library are imported at start-up; each command imports what it
needs. ``homeops version`` skips typer altogether (it is what scripts call in loops).
"""

# No `from __future__ import annotations` here: Typer evaluates the nested commands'
# annotations in this module's globals, where `typer` is only a local of build_app.
import errno
import gc
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from homeops import __version__

if TYPE_CHECKING:
    import typer

    from homeops.core.config import SettingsSpec
    from homeops.core.health import Check
    from homeops.core.jobs.types import JobType
    from homeops.core.registry import Domain, DomainContext, Registry, Remediation

PROG = "homeops"
HELP = """One tool for a NixOS homelab: fleet deploys, builds and binary cache, service
backups, a Windows VM; with shared config, logging, jobs and health checks.

Exit codes: 0 ok, 1 operational failure, 2 usage/config error, 3 dependency unavailable,
4 timeout. Logs go to stderr as logfmt; stdout carries only the result (--json for JSON)."""


# -- the domain records ---------------------------------------------------------------------


def _core_checks(ctx: "DomainContext") -> "Sequence[Check]":
    from homeops.core.doctor import core_checks

    return core_checks(ctx)


def _core_job_types(ctx: "DomainContext") -> "Sequence[JobType[Any]]":
    from homeops.core.housekeeping import core_job_types

    return core_job_types(ctx)


def _windows_spec() -> "SettingsSpec[Any]":
    from homeops.windows.settings import SPEC

    return SPEC


def _windows_job_types(ctx: "DomainContext") -> "Sequence[JobType[Any]]":
    from homeops.windows.jobs import windows_job_types

    return windows_job_types(ctx)


def _windows_checks(ctx: "DomainContext") -> "Sequence[Check]":
    from homeops.windows.checks import windows_checks

    return windows_checks(ctx)


def _windows_remediations(ctx: "DomainContext") -> "Mapping[str, Remediation]":
    from homeops.windows.checks import windows_remediations

    return windows_remediations(ctx)


def _windows_cli() -> "typer.Typer":
    from homeops.windows.cli import app

    return app()


def _services_spec() -> "SettingsSpec[Any]":
    from homeops.services.settings import SPEC

    return SPEC


def _services_job_types(ctx: "DomainContext") -> "Sequence[JobType[Any]]":
    from homeops.services.jobs import services_job_types

    return services_job_types(ctx)


def _services_cli() -> "typer.Typer":
    from homeops.services.cli import app

    return app()


def domain_records() -> "list[Domain]":
    """Every domain of this build, in report order; the core registers like any domain."""
    from homeops import windows
    from homeops.core.registry import Domain

    return [
        Domain(
            "core",
            "State dir, job store, artifacts, tools.",
            checks=_core_checks,
            job_types=_core_job_types,
        ),
        Domain(
            "windows",
            "Drive the Windows VM: commands over SSH, Aloha, Playwright.",
            command="win",
            settings=_windows_spec,
            cli=_windows_cli,
            aliases=("win-automation",),
            job_types=_windows_job_types,
            checks=_windows_checks,
            remediations=_windows_remediations,
            core_env=windows.CORE_ENV,
            core_keys=windows.CORE_KEYS,
        ),
        Domain(
            "services",
            "Docker-compose services and their restic backups.",
            command="svc",
            settings=_services_spec,
            cli=_services_cli,
            aliases=("svc",),
            job_types=_services_job_types,
        ),
    ]


def build_registry() -> "Registry":
    """The registry of :func:`domain_records`."""
    from homeops.core.registry import Registry

    return Registry.of(domain_records())


# -- the apps -------------------------------------------------------------------------------


def _version_payload(prog: str, as_json: bool) -> str:
    if as_json:
        import json
        import platform

        return json.dumps({"version": __version__, "python": platform.python_version()})
    return f"{prog} {__version__}"


def _registry() -> "Registry":
    # Looked up at call time: tests replace the module's build_registry with their own.
    return build_registry()


def _root_callback(app: "typer.Typer") -> None:
    import typer

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
        # Both are consumed by run_app before Typer parses; declared here for --help.
        # Logging is set up here, not in main(), so `--help` never imports it.
        from homeops.core import logging as hlog
        from homeops.core.cli.common import REGISTRY_META, options

        del config, debug
        hlog.configure(debug=options(ctx).debug)
        ctx.meta[REGISTRY_META] = _registry


def _new_app(prog: str, help_text: str, lazy: "dict[str, Any] | None" = None) -> "typer.Typer":
    import typer

    from homeops.core.cli.lazy import lazy_group_class

    app = typer.Typer(
        name=prog,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        # Rich-formatted help costs ~250 ms of imports on every --help; plain help is instant.
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
        cls=lazy_group_class(lazy or {}),
    )
    _root_callback(app)
    return app


def _add_version(app: "typer.Typer", prog: str) -> None:
    import typer

    from homeops.core.cli.common import JSON_HELP

    @app.command("version")
    def version(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
        """Print the version."""
        sys.stdout.write(_version_payload(prog, as_json) + "\n")


def build_app() -> "typer.Typer":
    """``homeops``: the core's commands plus one lazily built group per domain."""
    from homeops.core.cli import commands

    records = _registry().records()
    lazy = {d.group: (d.summary, _domain_factory(d.name)) for d in records if d.cli is not None}
    app = _new_app(PROG, HELP, lazy)
    _add_version(app, PROG)
    commands.add_doctor(app)
    commands.add_supervise(app)
    app.add_typer(commands.config_group(), name="config")
    app.add_typer(commands.jobs_group(), name="jobs")
    app.add_typer(commands.artifacts_group(), name="artifacts")
    return app


def _domain_factory(domain: str) -> "Callable[[], typer.Typer]":
    def build() -> "typer.Typer":
        return build_domain_app(domain)

    return build


def build_domain_app(domain: str, prog: str | None = None) -> "typer.Typer":
    """A domain's commands plus the core's, preset to that domain: ``homeops <group>`` and
    the seed tool (``prog``, which also gets the global options) run this same app.

    ``doctor``, ``worker`` and ``supervisor run`` see the domain (and the core) only;
    ``jobs``, ``artifacts`` and ``config`` are the core's, on the same store. A command or
    group the domain's own app defines wins over the core's of the same name.
    """
    import typer

    from homeops.core.cli import commands

    registry = _registry()
    record = registry.record(domain)
    preset = [name for name in ("core", domain) if name in registry.domains()]
    own = record.cli() if record.cli is not None else typer.Typer()
    help_text = own.info.help if isinstance(own.info.help, str) else record.summary
    if prog is None:
        # Mounted under homeops: the root callback (global options) is the umbrella's.
        app = typer.Typer(
            help=help_text,
            no_args_is_help=True,
            add_completion=False,
            rich_markup_mode=None,
            context_settings={"help_option_names": ["-h", "--help"]},
        )
    else:
        app = _new_app(prog, help_text)
    app.registered_commands.extend(own.registered_commands)
    app.registered_groups.extend(own.registered_groups)
    taken = {c.name for c in own.registered_commands} | {g.name for g in own.registered_groups}
    if "version" not in taken:
        _add_version(app, prog or PROG)
    if "doctor" not in taken:
        commands.add_doctor(app, preset=preset)
    if "worker" not in taken:
        commands.add_worker(app, preset=preset)
    if "supervisor" not in taken:
        supervisor = typer.Typer(
            help="The self-repair loop.", no_args_is_help=True, rich_markup_mode=None
        )
        commands.add_supervise(supervisor, name="run", preset=preset)
        app.add_typer(supervisor, name="supervisor")
    if "jobs" not in taken:
        app.add_typer(commands.jobs_group(worker=False), name="jobs")
    if "artifacts" not in taken:
        app.add_typer(commands.artifacts_group(), name="artifacts")
    if "config" not in taken:
        app.add_typer(commands.config_group(), name="config")
    return app


def build_seed_app(prog: str, domain: str) -> "typer.Typer":
    """A seed tool (``win-automation``): :func:`build_domain_app` under its own name."""
    return build_domain_app(domain, prog)


# -- the console entry ----------------------------------------------------------------------


def _fast_version(prog: str, args: list[str]) -> int | None:
    """``version`` without typer or settings (scripts call it in loops); None otherwise."""
    if args not in (["version"], ["version", "--json"], ["--version"]):
        return None
    if sys.stdout is None:
        sys.stderr.write("error: cannot write output: stdout is closed\n")
        return 1
    try:
        sys.stdout.write(_version_payload(prog, "--json" in args) + "\n")
        sys.stdout.flush()  # a full stdout fails here, not as a traceback at exit
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise
        sys.stderr.write(f"error: cannot write output to stdout: {exc.strerror or exc}\n")
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the unwritable buffer is dropped
        return 1
    return 0


def run_console(prog: str, args: Sequence[str]) -> int:
    """Run ``prog`` (``homeops`` or a seed tool's name) on ``args``; returns the exit code.

    The one entry of every console script: global options found anywhere on the line,
    the ``version`` fast path, and every error as one line with its exit code.
    """
    argv = list(args)
    fast = _fast_version(prog, argv)
    if fast is not None:
        return fast
    from homeops.core.cli.common import run_app

    if prog == PROG:
        return run_app(build_app, argv, prog_name=PROG)
    record = _registry().by_alias(prog)
    if record is None:
        # A copy or link of the script under another name is still homeops.
        return run_app(build_app, argv, prog_name=PROG)
    name = record.name
    return run_app(lambda: build_seed_app(prog, name), argv, prog_name=prog, seed=name)


def program_name(argv0: str) -> str:
    """The program a console script was started as: ``/usr/bin/win-automation`` ->
    ``win-automation``; Nix's wrapper renames the real script ``.win-automation-wrapped``."""
    base = os.path.basename(argv0)
    if base.startswith(".") and base.endswith("-wrapped"):
        base = base[1 : -len("-wrapped")]
    if base in ("", "__main__.py", "cli.py") or base.startswith("python"):
        return PROG  # python -m homeops.cli, or an embedding interpreter
    return base


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``homeops`` and of every seed tool's console script."""
    prog = program_name(sys.argv[0]) if argv is None and sys.argv else PROG
    # Start-up builds some 40k long-lived objects (typer, pydantic's models); with the default
    # gen-0 threshold of 700 the collector walks them over and over while they are made, and
    # the interpreter's shutdown collections walk them again. A higher threshold (still fine
    # for a worker that runs for days) and freezing what exists at the end cut about a fifth
    # of a short command's time (`svc list`, bench/services_bench.py). Only for a process
    # that is this command (argv None), not for a caller that embeds it.
    console = argv is None
    if console:
        gc.set_threshold(10_000, 10, 10)
    try:
        code = run_console(prog, list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    finally:
        if console:
            gc.freeze()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
