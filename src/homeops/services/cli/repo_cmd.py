"""``svc init``, ``svc check`` and ``svc list-backups``: one repository at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from homeops.core.cli.common import JSON_HELP
from homeops.services.cli.common import REPO_HELP

if TYPE_CHECKING:
    from homeops.services.restic import Snapshot


def register(app: typer.Typer) -> None:
    """Add ``init``, ``check`` and ``list-backups``."""
    app.command("init")(init_command)
    app.command("check")(check_command)
    app.command("list-backups")(list_backups_command)


def _repo(ctx: typer.Context, name: str, retry_lock: str | None = None) -> Any:  # noqa: ANN401
    from homeops.core.cli.common import duration_flag
    from homeops.services.cli.common import config_source, env_sources, svc_settings
    from homeops.services.repo import Repo, repo_name

    chosen = repo_name(name)
    wait = None if retry_lock is None else duration_flag("--retry-lock", retry_lock)
    return Repo.of(
        svc_settings(ctx),
        chosen,
        source=config_source(ctx),
        sources=env_sources(ctx),
        retry_lock_s=wait,
    )


def init_command(
    ctx: typer.Context,
    repo: str = typer.Argument(..., metavar="local|remote", help=REPO_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create the repository (exit 0 with state=exists when it is there already)."""
    from homeops.core.cli.common import json_errors
    from homeops.services import restic as r
    from homeops.services.cli.common import run_async
    from homeops.services.render import renderer_for

    out = renderer_for(as_json)
    with json_errors(as_json) as known:
        known["repo"] = repo
        target = _repo(ctx, repo)

        async def main() -> dict[str, Any]:
            restic = await target.restic()
            done, verdict = await target.run(r.init_argv(restic))
            if verdict.outcome is r.ResticOutcome.REPO_EXISTS:
                # There already: "exists" must also mean this password opens it, or the
                # next backup is the first to say otherwise.
                _probe, opened = await target.run(r.cat_config_argv(restic))
                problem = opened.error()
                if problem is not None:
                    raise type(problem)(f"the repository exists, but: {problem}")
                return {"ok": True, "repo": target.name, "state": "exists"}
            error = verdict.error()
            if error is not None:
                raise error
            return {
                "ok": True,
                "repo": target.name,
                "state": "created",
                "id": r.parse_init(done.stdout),
            }

        data = run_async(main())
    out.result(data, lambda: f"repo={data['repo']} state={data['state']}")


def check_command(
    ctx: typer.Context,
    repo: str = typer.Argument(..., metavar="local|remote", help=REPO_HELP),
    read_data_subset: str = typer.Option(
        None,
        "--read-data-subset",
        metavar="N%",
        help="Also read this part of the data (5%, 1/10, 500M).",
    ),
    retry_lock: str = typer.Option(
        None, "--retry-lock", metavar="DURATION", help="Wait this long for a locked repository."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check the repository's structure (and, with --read-data-subset, its data)."""
    from homeops.core.cli.common import json_errors
    from homeops.services import restic as r
    from homeops.services.cli.common import run_async
    from homeops.services.render import renderer_for

    out = renderer_for(as_json)
    with json_errors(as_json) as known:
        known["repo"] = repo
        target = _repo(ctx, repo, retry_lock)

        async def main() -> dict[str, Any]:
            restic = await target.restic()
            await target.checked(r.check_argv(restic, read_data_subset=read_data_subset))
            return {"ok": True, "repo": target.name, "read_data_subset": read_data_subset}

        data = run_async(main())
    out.result(data, lambda: f"repo={data['repo']} check=ok")


def list_backups_command(
    ctx: typer.Context,
    repo: str = typer.Argument(..., metavar="local|remote", help=REPO_HELP),
    service: str = typer.Argument(..., metavar="SVC", help="Service name."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The service's snapshots in the repository, oldest first."""
    from homeops.core.cli.common import json_errors
    from homeops.core.errors import UsageError
    from homeops.services import restic as r
    from homeops.services.cli.common import run_async, svc_settings
    from homeops.services.render import renderer_for, text_table

    out = renderer_for(as_json)
    with json_errors(as_json) as known:
        known.update(repo=repo, service=service)
        settings = svc_settings(ctx)
        if service not in settings.services:
            names = ", ".join(sorted(settings.services)) or "none"
            raise UsageError(f"no service {service!r} in the config (known: {names})")
        target = _repo(ctx, repo)

        async def main() -> list[Snapshot]:
            restic = await target.restic()
            done = await target.checked(r.snapshots_argv(restic, tag=service))
            return list(r.parse_snapshots(done.stdout))

        snapshots = run_async(main())
    data = [_snapshot_json(s) for s in snapshots]

    def text() -> str:
        if not snapshots:
            return f"no backups of {service} in {repo}"
        rows = [
            (s.short_id, s.time.strftime("%Y-%m-%d %H:%M:%S"), ",".join(s.tags), _paths(s.paths))
            for s in snapshots
        ]
        return text_table(("id", "time", "tags", "paths"), rows)

    out.result(data, text)


def _paths(paths: tuple[str, ...]) -> str:
    """The first path, and how many more (a volume's mountpoint is long)."""
    if not paths:
        return "-"
    return paths[0] + (f" (+{len(paths) - 1})" if len(paths) > 1 else "")


def _snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "id": snapshot.id,
        "short_id": snapshot.short_id,
        "time": snapshot.time.isoformat(),
        "hostname": snapshot.hostname,
        "tags": list(snapshot.tags),
        "paths": list(snapshot.paths),
    }
