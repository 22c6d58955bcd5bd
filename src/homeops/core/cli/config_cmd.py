"""``homeops config show``: the effective settings and where each value came from."""

from __future__ import annotations

import typer

from homeops.core.cli.common import JSON_HELP, load_core, print_json, print_text, table

app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Print every setting with its source (default, file or env); secrets masked."""
    from homeops.core.config import flatten

    loaded = load_core(ctx)
    rows = flatten(loaded)
    if as_json:
        print_json(
            {
                "config_file": str(loaded.config_path) if loaded.config_path else None,
                "settings": {key: {"value": value, "source": src} for key, value, src in rows},
                "warnings": list(loaded.warnings),
            }
        )
        return
    shown = [(key, "null" if value is None else value, src) for key, value, src in rows]
    print_text(table(("setting", "value", "source"), shown))
