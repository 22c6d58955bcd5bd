"""``svc init``, ``svc check`` and ``svc list-backups`` against real restic on a tmp repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.services.test_settings import run_svc

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed")


@pytest.fixture
def svc_config(tmp_path: Path, state_dir: Path) -> Path:
    password = tmp_path / "pw"
    password.write_text("correct horse\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello\n")
    config: dict[str, Any] = {
        "repositories": {
            "local": {"repository": str(tmp_path / "repo"), "password_file": str(password)},
        },
        "services": {"web": {"backup": {"enable": True, "paths": [str(data)]}}},
    }
    path = tmp_path / "services.json"
    path.write_text(json.dumps(config))
    return path


def restic_backup(tmp_path: Path, *tags: str) -> None:
    env = {
        **os.environ,
        "RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "RESTIC_PASSWORD_FILE": str(tmp_path / "pw"),
    }
    argv = ["restic", "backup", "--quiet", *(f"--tag={t}" for t in tags), str(tmp_path / "data")]
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=60)


def test_init_creates_then_finds_it_there(
    capsys: pytest.CaptureFixture[str], svc_config: Path, tmp_path: Path
) -> None:
    code, out, err = run_svc(capsys, "--config", str(svc_config), "init", "local")
    assert (code, out) == (0, "repo=local state=created\n"), err
    assert (tmp_path / "repo" / "config").is_file()
    code, out, err = run_svc(capsys, "--config", str(svc_config), "init", "local", "--json")
    assert code == 0, err
    assert json.loads(out) == {"ok": True, "repo": "local", "state": "exists"}


def test_list_backups_shows_only_the_services_snapshots(
    capsys: pytest.CaptureFixture[str], svc_config: Path, tmp_path: Path
) -> None:
    assert run_svc(capsys, "--config", str(svc_config), "init", "local")[0] == 0
    code, out, err = run_svc(capsys, "--config", str(svc_config), "list-backups", "local", "web")
    assert (code, out) == (0, "no backups of web in local\n"), err
    restic_backup(tmp_path, "web", "extra")
    restic_backup(tmp_path, "other")
    code, out, err = run_svc(
        capsys, "--config", str(svc_config), "list-backups", "local", "web", "--json"
    )
    assert code == 0, err
    [snapshot] = json.loads(out)
    assert snapshot["tags"] == ["web", "extra"]
    assert snapshot["paths"] == [str(tmp_path / "data")]
    code, out, err = run_svc(capsys, "--config", str(svc_config), "list-backups", "local", "web")
    assert code == 0, err
    assert out.splitlines()[0].split() == ["ID", "TIME", "TAGS", "PATHS"]
    assert snapshot["short_id"] in out
    [row] = out.splitlines()[1:]
    assert row.split()[-1] == str(tmp_path / "data")  # the path itself, not a count


def test_check_passes_on_a_sound_repository(
    capsys: pytest.CaptureFixture[str], svc_config: Path, tmp_path: Path
) -> None:
    assert run_svc(capsys, "--config", str(svc_config), "init", "local")[0] == 0
    restic_backup(tmp_path, "web")
    code, out, err = run_svc(
        capsys, "--config", str(svc_config), "check", "local", "--read-data-subset", "50%"
    )
    assert (code, out) == (0, "repo=local check=ok\n"), err


def test_a_missing_repository_suggests_svc_init(
    capsys: pytest.CaptureFixture[str], svc_config: Path
) -> None:
    code, out, err = run_svc(
        capsys, "--config", str(svc_config), "list-backups", "local", "web", "--json"
    )
    assert code == 1
    assert err.count("\n") == 1 and "svc init local" in err
    failure = json.loads(out)
    assert failure["ok"] is False and failure["exit_code"] == 1
    assert (failure["repo"], failure["service"]) == ("local", "web")


def test_init_of_an_existing_repository_checks_the_password(
    capsys: pytest.CaptureFixture[str], svc_config: Path, tmp_path: Path
) -> None:
    assert run_svc(capsys, "--config", str(svc_config), "init", "local")[0] == 0
    (tmp_path / "pw").write_text("wrong guess\n")
    code, out, err = run_svc(capsys, "--config", str(svc_config), "init", "local")
    assert (code, out) == (1, ""), err
    assert "the repository exists, but: " in err and "password" in err
    assert "wrong guess" not in err and err.count("\n") == 1


def test_a_wrong_password_is_named_and_never_shown(
    capsys: pytest.CaptureFixture[str], svc_config: Path, tmp_path: Path
) -> None:
    assert run_svc(capsys, "--config", str(svc_config), "init", "local")[0] == 0
    (tmp_path / "pw").write_text("wrong guess\n")
    code, out, err = run_svc(capsys, "--config", str(svc_config), "check", "local")
    assert (code, out) == (1, "")
    assert "password" in err and "wrong guess" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(
            ("init", "remote"), "repositories.remote: no repository configured", id="remote"
        ),
        pytest.param(("init", "offsite"), "must be 'local' or 'remote'", id="bad-repo"),
        pytest.param(("list-backups", "local", "nope"), "no service 'nope'", id="unknown-service"),
        pytest.param(("check", "local", "--retry-lock", "soon"), "--retry-lock", id="bad-duration"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], svc_config: Path, args: tuple[str, ...], needle: str
) -> None:
    code, out, err = run_svc(capsys, "--config", str(svc_config), *args)
    assert (code, out) == (2, ""), err
    assert err.count("\n") == 1 and needle in err, err


def test_the_password_never_reaches_argv_or_the_logs(
    capsys: pytest.CaptureFixture[str], svc_config: Path
) -> None:
    code, _, err = run_svc(capsys, "--debug", "--config", str(svc_config), "init", "local")
    assert code == 0, err
    # The debug log shows every restic argv: the password is in none of them.
    assert "argv=" in err or "restic" in err
    assert "correct horse" not in err


def test_init_of_an_unreachable_sftp_host_is_exit_3_like_backup(
    capsys: pytest.CaptureFixture[str], svc_config: Path, tmp_path: Path
) -> None:
    config = json.loads(svc_config.read_text())
    # An ssh that exits at once: what restic sees when the host is down (loopback only).
    config["repositories"]["remote"] = {
        "repository": "sftp:nobody@127.0.0.1:/srv/restic",
        "password_file": str(tmp_path / "pw"),
        "options": ["sftp.command=false"],
    }
    svc_config.write_text(json.dumps(config))
    for args in (("init", "remote"), ("backup", "remote", "web")):
        code, _out, err = run_svc(capsys, "--config", str(svc_config), *args)
        assert code == 3, (args, err)
        assert "unable to start the sftp session" in err and "reachable" in err, args


def test_init_through_a_repository_file_names_the_file(
    capsys: pytest.CaptureFixture[str], svc_config: Path, tmp_path: Path
) -> None:
    config = json.loads(svc_config.read_text())
    where = tmp_path / "repository.txt"
    where.write_text(f"{tmp_path / 'pw'}\n")  # a file, where a directory should be
    local = config["repositories"]["local"]
    del local["repository"]
    local["repository_file"] = str(where)
    svc_config.write_text(json.dumps(config))
    code, out, err = run_svc(capsys, "--config", str(svc_config), "init", "local")
    assert (code, out) == (1, ""), err
    assert f"create repository at repository_file {where} failed" in err
    assert "at  failed" not in err and "ssh" not in err
