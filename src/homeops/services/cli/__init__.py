"""The services domain's commands: ``homeops svc …`` and the seed tool ``svc …``.

One module per group of commands (seed 002's plan: list, backups, restore, service actions),
each with ``register(app)``; typer is the only import at module level, the flows are
imported inside the commands. The seed tool adds the core's ``doctor``, ``worker``,
``jobs``, ``artifacts`` and ``config`` to these.
"""

from __future__ import annotations

import typer

HELP = """Docker-compose services on the home server and their restic backups (seed 002).

Exit codes: 0 ok, 1 a service, restic or docker failed, 2 usage or config error, 3 a
dependency is unavailable (restic, docker, an unreachable repository), 4 timeout."""


def app() -> typer.Typer:
    """The domain's Typer app (mounted as ``homeops svc``, run as ``svc``)."""
    from homeops.services.cli import backup_cmd, list_cmd, repo_cmd, restore_cmd, units_cmd

    root = typer.Typer(help=HELP, no_args_is_help=True, rich_markup_mode=None)
    for module in (list_cmd, backup_cmd, restore_cmd, repo_cmd, units_cmd):
        module.register(root)
    return root
