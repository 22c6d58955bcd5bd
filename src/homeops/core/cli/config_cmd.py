"""``homeops config show``: the effective settings and where each value came from."""

from __future__ import annotations

import typer

from homeops.core.cli.common import (
    JSON_HELP,
    json_errors,
    load_config,
    print_json,
    print_text,
    table,
)

app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Print every setting of the core and of each domain with its source; secrets masked.

    A domain's settings are shown under its name (``windows.ssh_host``), as the umbrella
    file nests them.
    """
    from homeops.core.config import flatten

    with json_errors(as_json):
        config = load_config(ctx)
        rows = flatten(config.core)
        files = {"core": config.core.config_path}
        warnings = list(config.core.warnings)
        for name in config.names():
            loaded = config.domain(name)
            rows.extend((f"{name}.{key}", value, src) for key, value, src in flatten(loaded))
            files[name] = loaded.config_path
            warnings.extend(loaded.warnings)
    if as_json:
        print_json(
            {
                "config_file": str(config.core.config_path) if config.core.config_path else None,
                "files": {name: str(path) if path else None for name, path in files.items()},
                "domains": config.names(),
                "settings": {key: {"value": value, "source": src} for key, value, src in rows},
                "warnings": warnings,
            }
        )
        return
    shown = [(key, "null" if value is None else value, src) for key, value, src in rows]
    print_text(table(("setting", "value", "source"), shown))
