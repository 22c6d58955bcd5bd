"""The windows domain's commands: ``homeops win …`` and the seed tool ``win-automation …``.

One module per command group (``windows exec``, ``aloha``, ``playwright``, ``jobs enqueue``);
each imports only typer at module level, and the heavy parts (asyncssh, httpx, playwright)
inside its commands, so ``win-automation --help`` stays fast. The seed tool adds the core's
``doctor``, ``worker``, ``supervisor run``, ``artifacts`` and ``config`` to these.
"""

from __future__ import annotations

import typer

HELP = """Drive the Windows VM: commands over SSH, GUI runs through Aloha, browsers through a
Playwright server, durable jobs with artifacts, a self-repairing supervisor."""


def app() -> typer.Typer:
    """The domain's Typer app (mounted as ``homeops win``, run as ``win-automation``)."""
    from homeops.windows.cli import aloha_cmd, exec_cmd, jobs_cmd, playwright_cmd

    root = typer.Typer(help=HELP, no_args_is_help=True)
    root.add_typer(exec_cmd.group(), name="windows")
    root.add_typer(aloha_cmd.group(), name="aloha")
    root.add_typer(playwright_cmd.group(), name="playwright")
    root.add_typer(jobs_cmd.group(), name="jobs")
    return root
