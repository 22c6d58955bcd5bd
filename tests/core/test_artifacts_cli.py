"""`homeops artifacts sweep` prunes finished jobs too, as the core.artifacts-sweep job does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homeops.core.jobs import SqliteJobQueue
from homeops.core.jobs.retention import DAY_S
from tests.core.test_cli import run_main
from tests.core.test_jobs_retention import old_finished_jobs

pytestmark = pytest.mark.integration


def db_of(state_dir: Path) -> Path:
    return state_dir / "jobs.sqlite3"


def test_sweep_prunes_finished_jobs_past_retention(capsys, state_dir: Path) -> None:
    old_finished_jobs(db_of(state_dir), 3, age_days=40)
    recent = old_finished_jobs(db_of(state_dir), 2, age_days=10)
    code, out, err = run_main(capsys, "artifacts", "sweep")
    assert code == 0, err
    assert out == "removed 0 job artifact dir(s)\npruned 3 finished job(s) older than 30d\n"
    with SqliteJobQueue(db_of(state_dir), readonly=True) as q:
        assert sorted(j.id for j in q.list()) == sorted(recent)
    code, out, err = run_main(capsys, "artifacts", "sweep", "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "removed": [],
        "jobs_pruned": {"removed": 0, "dry_run": False, "older_than_s": 30 * DAY_S},
    }


def test_sweep_without_a_store_creates_none(capsys, state_dir: Path) -> None:
    code, out, err = run_main(capsys, "artifacts", "sweep", "--json")
    assert code == 0, err
    assert json.loads(out)["jobs_pruned"]["removed"] == 0
    assert not db_of(state_dir).exists()


def test_sweep_no_prune_jobs_and_retention_off(capsys, state_dir: Path, monkeypatch) -> None:
    old_finished_jobs(db_of(state_dir), 2, age_days=40)
    code, out, err = run_main(capsys, "artifacts", "sweep", "--no-prune-jobs", "--json")
    assert code == 0, err
    assert json.loads(out) == {"removed": [], "jobs_pruned": None}
    code, out, _ = run_main(capsys, "artifacts", "sweep", "--no-prune-jobs")
    assert out == "removed 0 job artifact dir(s)\n"
    monkeypatch.setenv("HOMEOPS_JOBS_RETENTION_DAYS", "never")
    code, out, err = run_main(capsys, "artifacts", "sweep")
    assert code == 0, err
    assert out.splitlines()[-1] == "retention is off (jobs.retention_days: never); no jobs pruned"
    with SqliteJobQueue(db_of(state_dir), readonly=True) as q:
        assert len(q.list()) == 2
