"""``homeops win …`` and ``win-automation …`` are one app: the same commands, help and behaviour."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.core.test_cli import run_main
from tests.windows.test_exec import run_win


def _commands(help_text: str) -> list[str]:
    section = help_text.split("Commands:\n", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  (\S+)", section, re.MULTILINE)]


def test_homeops_win_lists_every_command_of_the_seed_tool(capsys, state_dir: Path) -> None:
    code, seed, err = run_win(capsys, "--help")
    assert code == 0, err
    code, mounted, err = run_main(capsys, "win", "--help")
    assert code == 0, err
    assert sorted(_commands(mounted)) == sorted(_commands(seed))
    for name in ("windows", "aloha", "playwright", "jobs", "worker", "doctor"):
        assert name in _commands(mounted)
    for name in ("supervisor", "artifacts", "config", "version"):
        assert name in _commands(mounted)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(("supervisor", "run"), id="supervisor-run"),
        pytest.param(("artifacts", "gc"), id="artifacts-gc"),
        pytest.param(("config", "show"), id="config-show"),
        pytest.param(("windows", "exec"), id="windows-exec"),
        pytest.param(("aloha", "run"), id="aloha-run"),
        pytest.param(("jobs", "enqueue"), id="jobs-enqueue"),
    ],
)
def test_help_is_the_same_plain_text_under_both_names(
    capsys, state_dir: Path, path: tuple[str, ...]
) -> None:
    code, seed, err = run_win(capsys, *path, "--help")
    assert code == 0, err
    code, mounted, err = run_main(capsys, "win", *path, "--help")
    assert code == 0, err

    # Only the program's name may differ; Rich's box drawing is never used.
    def same(text: str) -> str:
        return text.replace("homeops win", "PROG").replace("win-automation", "PROG")

    assert same(seed) == same(mounted)
    assert not set("╭─╮│╰╯") & set(mounted)


def test_worker_and_doctor_run_under_homeops_win(capsys, state_dir: Path, tmp_path: Path) -> None:
    # Nothing queued: the worker drains at once; doctor reports the domain's checks as JSON.
    code, out, err = run_main(capsys, "win", "worker", "--drain")
    assert (code, out) == (0, ""), err
    code, out, err = run_main(capsys, "win", "version", "--json")
    assert code == 0, err
    assert json.loads(out)["version"]
    config = tmp_path / "win.json"
    config.write_text(json.dumps({"windows": {"ssh_host": "127.0.0.1", "ssh_port": 1}}))
    code, out, err = run_win(capsys, "--config", str(config), "config", "show", "--json")
    assert code == 0, err
    seed_view = json.loads(out)
    # homeops reads its own file, where the domain's keys sit under "windows".
    umbrella = tmp_path / "homeops.json"
    umbrella.write_text(json.dumps({"windows": json.loads(config.read_text())}))
    code, out, err = run_main(capsys, "win", "config", "show", "--json", "--config", str(umbrella))
    assert code == 0, err
    mounted_view = json.loads(out)
    # The same windows values, each from the file it was read from.
    windows = {k: v for k, v in seed_view["settings"].items() if k.startswith("windows.")}
    assert windows["windows.windows.ssh_port"]["value"] == 1
    assert {k: v["value"] for k, v in windows.items()} == {
        k: mounted_view["settings"][k]["value"] for k in windows
    }
