"""`jobs list`/`jobs status` find the store without the settings models when only defaults
apply, and give exactly the answer the settings would (core/cli/common.defaults_only_store)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from homeops.core.cli.common import GlobalOptions, defaults_only_store
from homeops.core.config import load_settings
from homeops.core.settings import CORE_SPEC


def _fast(monkeypatch, environ, opts=None):
    for name in list(os.environ):
        if name.startswith("HOMEOPS_") or name in ("XDG_STATE_HOME",):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    app = typer.Typer()
    app.command("noop")(lambda: None)
    ctx = typer.Context(typer.main.get_command(app), obj=opts or GlobalOptions())
    return defaults_only_store(ctx)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"HOMEOPS_STATE_DIR": "/srv/ho"}, id="state-dir"),
        pytest.param({"HOMEOPS_STATE_DIR": "~/st"}, id="tilde"),
        pytest.param({"HOMEOPS_STATE_DIR": "rel/dir"}, id="relative"),
        pytest.param({"XDG_STATE_HOME": "/x/state"}, id="xdg"),
        pytest.param({"XDG_STATE_HOME": "relative"}, id="xdg-relative-ignored"),
        pytest.param({"HOMEOPS_STATE_DIR": ""}, id="empty-is-unset"),
    ],
)
def test_same_store_as_the_settings(monkeypatch, environ):
    fast = _fast(monkeypatch, environ)
    assert fast is not None
    assert fast == load_settings(CORE_SPEC, environ=dict(os.environ)).settings.jobs_db


@pytest.mark.parametrize(
    ("environ", "opts"),
    [
        pytest.param({"HOMEOPS_JOBS_DB_PATH": "/elsewhere.db"}, GlobalOptions(), id="db-path"),
        pytest.param({"HOMEOPS_CONFIG": "/etc/h.json"}, GlobalOptions(), id="config-env"),
        pytest.param({"HOMEOPS_JOBS_SLOTZ": "3"}, GlobalOptions(), id="stray-var-warned"),
        pytest.param({"HOMEOPS_LOG_LEVEL": ""}, GlobalOptions(), id="any-homeops-var"),
        pytest.param({}, GlobalOptions(config=Path("h.json")), id="config-flag"),
        pytest.param({}, GlobalOptions(seed="windows"), id="seed-tool"),
        pytest.param({"HOMEOPS_STATE_DIR": "~nobody/x"}, GlobalOptions(), id="bad-state-dir"),
    ],
)
def test_anything_but_defaults_loads_the_settings(monkeypatch, environ, opts):
    assert _fast(monkeypatch, environ, opts) is None


def test_jobs_list_without_settings_imports_no_pydantic(tmp_path):
    code = (
        "import sys\n"
        "from homeops.cli import main\n"
        "try:\n"
        "    main(['jobs', 'list', '--json'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('pydantic' in sys.modules, file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEOPS_")}
    env["HOMEOPS_STATE_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert json.loads(done.stdout) == []
    assert done.stderr.strip().splitlines()[-1] == "False"


def test_jobs_list_with_a_db_path_still_reads_that_store(tmp_path):
    from homeops.core.jobs.store import open_store_at

    db = tmp_path / "other.sqlite3"
    queue = open_store_at(db)
    queue.enqueue("core.artifacts-sweep", {})
    queue.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEOPS_")}
    env.update(HOMEOPS_STATE_DIR=str(tmp_path / "state"), HOMEOPS_JOBS_DB_PATH=str(db))
    homeops = str(Path(sys.executable).with_name("homeops"))
    done = subprocess.run(
        [homeops, "jobs", "list", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert [j["type"] for j in json.loads(done.stdout)] == ["core.artifacts-sweep"]
