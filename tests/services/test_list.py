"""``svc list``: the ledger's last backups, staleness, unit states; never restic."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from homeops.core.jobs import SqliteJobQueue
from homeops.services.list_flow import parse_systemctl_show
from tests.services.test_settings import run_svc

DAY = 86400.0


def record(
    queue: SqliteJobQueue,
    service: str,
    repo: str,
    result: dict[str, Any] | None,
    *,
    fail: bool = False,
) -> str:
    job = queue.enqueue("services.backup", {"repo": repo, "service": service})
    [claimed] = queue.claim("test", 1, 30.0, ids=[job.id])
    if fail:
        queue.fail(claimed.id, "test", "restic: wrong password", retryable=False)
    else:
        queue.complete(claimed.id, "test", result)
    return job.id


@pytest.fixture
def config(tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # No restic may run on this path: a restic that records being called.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    spy = bin_dir / "restic"
    spy.write_text(f"#!/bin/sh\necho called >> {tmp_path / 'restic-called'}\nexit 1\n")
    spy.chmod(spy.stat().st_mode | stat.S_IXUSR)
    data = {
        "systemd": "never",
        "tools": {"restic": str(spy), "docker": str(bin_dir / "no-docker")},
        "services": {
            "daily": {"backup": {"enable": True, "paths": ["/srv/a"]}},
            "weekly": {
                "backup": {
                    "enable": True,
                    "paths": ["/srv/b"],
                    "policy": {"daily": 0, "weekly": 4, "monthly": 0},
                }
            },
            "nobackup": {},
        },
    }
    path = tmp_path / "services.json"
    path.write_text(json.dumps(data))
    return path


def test_last_backups_come_from_the_ledger_and_age_into_stale(
    capsys: pytest.CaptureFixture[str], config: Path, state_dir: Path, tmp_path: Path
) -> None:
    now = 1_800_000_000.0
    clock = [now - 2 * DAY]
    queue = SqliteJobQueue(state_dir / "jobs.sqlite3", clock=lambda: clock[0])
    try:
        # Two days ago: an old daily backup and a weekly one (not stale for a weekly policy).
        record(queue, "daily", "local", {"repo": "local", "outcome": "ok", "bytes": 2048})
        record(queue, "weekly", "local", {"repo": "local", "outcome": "ok", "bytes": 10})
        clock[0] = now - 3600
        newest = record(
            queue,
            "daily",
            "local",
            {"outcome": "partial", "bytes": 5 << 30, "snapshot_id": "abc123", "files": 7},
        )
        record(queue, "daily", "remote", None, fail=True)
        # A later dry run saved nothing: the listing keeps showing the real last backup.
        clock[0] = now - 60
        dry = queue.enqueue(
            "services.backup", {"repo": "local", "service": "daily", "dry_run": True}
        )
        [claimed] = queue.claim("test", 1, 30.0, ids=[dry.id])
        queue.complete(claimed.id, "test", {"state": "ok", "dry_run": True})
    finally:
        queue.close()
    code, out, err = run_svc(capsys, "--config", str(config), "list", "--json")
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)}
    assert list(rows) == ["daily", "nobackup", "weekly"]
    daily = rows["daily"]["backups"]
    assert daily["local"]["job_id"] == newest
    assert (daily["local"]["outcome"], daily["local"]["snapshot_id"]) == ("partial", "abc123")
    assert (daily["local"]["bytes"], daily["local"]["files"]) == (5 << 30, 7)
    # The newest local backup is an hour old: fresh. The remote one failed: stale.
    assert daily["local"]["stale"] is False
    assert (daily["remote"]["outcome"], daily["remote"]["stale"]) == ("failed", True)
    assert "wrong password" in daily["remote"]["error"]
    assert rows["weekly"]["backups"]["local"]["stale"] is False
    assert rows["weekly"]["backups"]["remote"] is None
    assert rows["nobackup"]["backup"] is False
    # The engine could not be asked: said once, the state unknown, the listing still made.
    assert rows["daily"]["unit_state"] == "unknown"
    assert err.count("note: containers unknown") == 1
    assert not (tmp_path / "restic-called").exists()


def test_text_table_marks_stale_and_never(
    capsys: pytest.CaptureFixture[str], config: Path, state_dir: Path
) -> None:
    import time

    queue = SqliteJobQueue(state_dir / "jobs.sqlite3", clock=lambda: time.time() - 3 * DAY)
    try:
        record(queue, "daily", "local", {"outcome": "ok", "bytes": 1536})
    finally:
        queue.close()
    code, out, err = run_svc(capsys, "--config", str(config), "list")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert out.splitlines()[0].split() == ["SERVICE", "UNIT", "RUNNING", "LOCAL", "REMOTE"]
    assert "STALE 3d ago 1.5 KiB ok" in lines["daily"]
    assert lines["daily"].rstrip().endswith("never")
    assert lines["nobackup"].split()[-2:] == ["-", "-"]


def test_an_empty_store_is_not_created_by_listing(
    capsys: pytest.CaptureFixture[str], config: Path, state_dir: Path
) -> None:
    code, out, err = run_svc(capsys, "--config", str(config), "list", "--json")
    assert code == 0, err
    assert all(b is None for row in json.loads(out) for b in row["backups"].values())
    assert not (state_dir / "jobs.sqlite3").exists()


def test_unit_states_come_from_one_systemctl_call(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "systemctl-calls"
    fake = tmp_path / "bin" / "systemctl"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        "printf 'Id=docker-compose-daily.service\\nLoadState=loaded\\nActiveState=active\\n"
        "SubState=running\\n\\nId=docker-compose-nobackup.service\\nLoadState=not-found\\n"
        "ActiveState=inactive\\nSubState=dead\\n\\nId=docker-compose-weekly.service\\n"
        "LoadState=loaded\\nActiveState=failed\\nSubState=failed\\n'\n"
    )
    fake.chmod(0o755)
    data = json.loads(config.read_text())
    data["systemd"] = "always"
    data["tools"]["systemctl"] = str(fake)
    config.write_text(json.dumps(data))
    code, out, err = run_svc(capsys, "--config", str(config), "list", "--json")
    assert code == 0, err
    states = {row["name"]: row["unit_state"] for row in json.loads(out)}
    assert states == {
        "daily": "active (running)",
        "nobackup": "not-found",
        "weekly": "failed (failed)",
    }
    [call] = calls.read_text().splitlines()
    assert call.split()[:3] == ["show", "-p", "Id,LoadState,ActiveState,SubState"]
    assert len(call.split()) == 6  # all three units in one call


def test_parse_systemctl_show_blocks() -> None:
    text = (
        "Id=docker-compose-a.service\nLoadState=loaded\nActiveState=activating\n"
        "SubState=start\n\nId=docker-compose-b.service\nLoadState=not-found\n"
        "ActiveState=inactive\nSubState=dead\n"
    )
    assert parse_systemctl_show(text) == {
        "docker-compose-a.service": "activating (start)",
        "docker-compose-b.service": "not-found",
    }
    assert parse_systemctl_show("") == {}


def test_a_bad_config_is_exit_2_before_anything_is_asked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state_dir: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"services": {"web": {"backup": {"enable": true}}}}')
    code, out, err = run_svc(capsys, "--config", str(bad), "list", "--json")
    assert code == 2
    assert json.loads(out)["ok"] is False
    assert "services.web.backup" in err
    assert os.path.exists(bad)


def test_a_backup_whose_process_died_is_lost_and_stale(
    capsys: pytest.CaptureFixture[str], config: Path, state_dir: Path
) -> None:
    import time

    clock = [time.time() - 120]
    queue = SqliteJobQueue(state_dir / "jobs.sqlite3", clock=lambda: clock[0])
    try:
        job = queue.enqueue("services.backup", {"repo": "local", "service": "daily"})
        queue.claim("killed-worker", 1, 30.0, ids=[job.id])  # its lease ended 90 s ago
        live = queue.enqueue("services.backup", {"repo": "remote", "service": "daily"})
        clock[0] = time.time()
        queue.claim("live-worker", 1, 300.0, ids=[live.id])
    finally:
        queue.close()
    code, out, err = run_svc(capsys, "--config", str(config), "list", "--json")
    assert code == 0, err
    daily = {row["name"]: row for row in json.loads(out)}["daily"]["backups"]
    assert (daily["local"]["state"], daily["local"]["outcome"]) == ("running", "lost")
    assert daily["local"]["stale"] is True
    assert (daily["remote"]["outcome"], daily["remote"]["stale"]) == (None, False)
    code, out, err = run_svc(capsys, "--config", str(config), "list")
    assert "STALE lost" in out
