"""``svc start|stop|restart <svc|all>`` and ``svc logs <svc>``: the service actions.

Through systemd's ``docker-compose-<svc>`` units, or compose directly with ``--no-systemd``
(and whenever ``settings.systemd`` says so: ``never``, or ``auto`` without systemd running);
see services/units.py. ``all`` is every service with ``compose.enable``, in name order; it
goes on past a failing service and exits 1 if any failed, unless all of them failed with the
same code (3 for every one: docker or systemd is not there), which it then exits with; one
service exits with its failure's own code.

``svc logs`` follows by default (``--no-follow`` prints and exits) and shows the last
``--tail`` lines first (100). While following, SIGINT or SIGTERM ends it with exit 0: that
is how following is meant to end, and the log process is stopped with it; without
``--follow``, a signal is an interruption (130/143).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import typer

from homeops.core.cli.common import JSON_HELP

if TYPE_CHECKING:
    from homeops.services.settings import SvcSettings
    from homeops.services.units import Action

ALL: Final = "all"
DEFAULT_TAIL: Final = 100
NO_SYSTEMD_HELP: Final = "Run compose directly instead of the docker-compose-<svc> unit."
_SERVICE_HELP: Final = "Service, or all: every service with compose.enable."
_EXIT_SIGNALLED: Final = {"SIGINT": 130, "SIGTERM": 143}


def register(app: typer.Typer) -> None:
    """Add ``start``, ``stop``, ``restart`` and ``logs``."""
    app.command("start")(start_command)
    app.command("stop")(stop_command)
    app.command("restart")(restart_command)
    app.command("logs")(logs_command)


def start_command(
    ctx: typer.Context,
    service: str = typer.Argument(..., metavar="SVC|all", help=_SERVICE_HELP),
    no_systemd: bool = typer.Option(False, "--no-systemd", help=NO_SYSTEMD_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Start a service (systemctl start docker-compose-<svc>, or compose up -d)."""
    from homeops.services.units import Action

    _act(ctx, Action.START, service, no_systemd=no_systemd, as_json=as_json)


def stop_command(
    ctx: typer.Context,
    service: str = typer.Argument(..., metavar="SVC|all", help=_SERVICE_HELP),
    no_systemd: bool = typer.Option(False, "--no-systemd", help=NO_SYSTEMD_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Stop a service (systemctl stop, or compose stop: containers and volumes are kept)."""
    from homeops.services.units import Action

    _act(ctx, Action.STOP, service, no_systemd=no_systemd, as_json=as_json)


def restart_command(
    ctx: typer.Context,
    service: str = typer.Argument(..., metavar="SVC|all", help=_SERVICE_HELP),
    no_systemd: bool = typer.Option(False, "--no-systemd", help=NO_SYSTEMD_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Restart a service (systemctl restart, or compose stop then up -d)."""
    from homeops.services.units import Action

    _act(ctx, Action.RESTART, service, no_systemd=no_systemd, as_json=as_json)


def _chosen(settings: SvcSettings, service: str) -> list[str]:
    from homeops.core.errors import UsageError

    if service == ALL:
        return sorted(name for name, s in settings.services.items() if s.compose.enable)
    if service not in settings.services:
        known = ", ".join(sorted(settings.services)) or "none"
        raise UsageError(f"no service {service!r} in the config (known: {known})")
    if not settings.services[service].compose.enable:
        raise UsageError(f"{service}: compose.enable is false; it is not run as a service")
    return [service]


@dataclass(frozen=True)
class _Done:
    service: str
    ok: bool
    via: str
    state: str | None = None
    error: str | None = None
    exit_code: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "ok": self.ok,
            "via": self.via,
            "state": self.state,
            "error": self.error,
            "exit_code": self.exit_code,
        }


def _act(
    ctx: typer.Context, action: Action, service: str, *, no_systemd: bool, as_json: bool
) -> None:
    from homeops.core.cli.common import json_errors, report_error
    from homeops.services.cli.common import run_async, svc_settings
    from homeops.services.render import renderer_for, text_table
    from homeops.services.units import systemd_wanted

    out = renderer_for(as_json)
    with json_errors(as_json) as known:
        known.update(action=str(action), service=service)
        settings = svc_settings(ctx)
        names = _chosen(settings, service)
        systemd = systemd_wanted(settings, no_systemd=no_systemd)
        done = run_async(_act_all(settings, action, names, systemd=systemd))
    failed = [d for d in done if not d.ok]
    data = {
        "ok": not failed,
        "action": str(action),
        "via": "systemd" if systemd else "compose",
        "services": [d.as_json() for d in done],
    }

    def text() -> str:
        if not done:
            return "no service has compose.enable"
        rows = [(d.service, "ok" if d.ok else "failed", d.via, d.state) for d in done]
        return text_table(("service", str(action), "via", "state"), rows)

    out.result(data, text)
    for d in failed:
        message = _naming(d.service, d.error or "failed")
        # A ConfigError's message starts "config error: " already, as at the top level.
        report_error(message, prefix="" if message.startswith("config error: ") else "error: ")
    if failed:
        raise typer.Exit(_exit_code(done, failed))


def _naming(service: str, error: str) -> str:
    """``error`` naming ``service`` once: most of services/units.py's errors name it
    already (``web: compose start: …``, ``services.web.compose.path``, its unit)."""
    from homeops.services.units import unit_name

    if error.startswith(f"{service}: ") or f"services.{service}." in error:
        return error
    return error if unit_name(service) in error else f"{service}: {error}"


def _exit_code(done: list[_Done], failed: list[_Done]) -> int:
    """One service: its failure's own code. Several: 1, unless every one failed for the
    same kind of reason (3: the Docker daemon is not there), which is then the code."""
    codes = {d.exit_code for d in failed}
    if len(failed) == len(done) and len(codes) == 1:
        return codes.pop() or 1
    return 1


async def _act_all(
    settings: SvcSettings, action: Action, names: list[str], *, systemd: bool
) -> list[_Done]:
    from homeops.core.errors import HomeopsError
    from homeops.services import docker as d
    from homeops.services import units

    done: list[_Done] = []
    via = units.Via.SYSTEMD if systemd else units.Via.COMPOSE
    for name in names:
        try:
            await units.act(settings, name, action, systemd=systemd)
        except HomeopsError as exc:
            done.append(_Done(name, False, str(via), error=str(exc), exit_code=int(exc.exit_code)))
            continue
        try:
            state: str | None = str(d.project_state(await units.containers(settings, name)))
        except HomeopsError:
            state = None  # the action was done; what it left is only a report
        done.append(_Done(name, True, str(via), state=state))
    return done


def logs_command(
    ctx: typer.Context,
    service: str = typer.Argument(..., metavar="SVC", help="Service name."),
    no_follow: bool = typer.Option(False, "--no-follow", help="Print the lines and exit."),
    tail: int = typer.Option(
        DEFAULT_TAIL, "--tail", min=0, metavar="N", help="Start with the last N lines."
    ),
    no_systemd: bool = typer.Option(
        False, "--no-systemd", help="compose logs instead of the unit's journal."
    ),
) -> None:
    """Show a service's logs: its unit's journal (journalctl -u), or compose logs."""
    import asyncio
    import signal
    import sys

    from homeops.core.cli.common import write_stdout
    from homeops.core.cli.signals import install
    from homeops.services.cli.common import run_async, svc_settings
    from homeops.services.units import logs, systemd_wanted

    settings = svc_settings(ctx)
    _chosen(settings, service)
    systemd = systemd_wanted(settings, no_systemd=no_systemd)
    follow = not no_follow

    async def main() -> str | None:
        ended = asyncio.Event()
        why: list[str] = []

        def on_line(line: str) -> None:
            if ended.is_set():
                return
            try:
                write_stdout(line + "\n")
            except BrokenPipeError:
                why.append("reader gone")  # `svc logs x | head`: nothing more to print
                ended.set()

        def on_error_line(line: str) -> None:
            sys.stderr.write(line + "\n")

        def on_signal(signum: int) -> None:
            why.append(signal.Signals(signum).name)
            ended.set()

        remove = install(on_signal)
        task = asyncio.ensure_future(
            logs(
                settings,
                service,
                systemd=systemd,
                follow=follow,
                tail=tail,
                on_line=on_line,
                on_error_line=on_error_line,
            )
        )
        waiter = asyncio.ensure_future(ended.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            remove()
            waiter.cancel()
            if not task.done():
                task.cancel()  # the process seam stops journalctl / compose with it
                await asyncio.gather(task, return_exceptions=True)
        if task.done() and not task.cancelled():
            task.result()  # its error, if it failed
            return None
        return why[0] if why else None

    stopped_by = run_async(main())
    if stopped_by in _EXIT_SIGNALLED and not follow:
        raise typer.Exit(_EXIT_SIGNALLED[stopped_by])
