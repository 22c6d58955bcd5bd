"""`homeops jobs …` and `doctor` against odd stores: missing, locked, corrupt; --payload forms."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from homeops.core.housekeeping import SWEEP_ARTIFACTS as SWEEP
from homeops.core.jobs.sqlite import SqliteJobQueue
from tests.core.test_cli import HOMEOPS, run_main
from tests.core.test_jobs_store import fill_store, overwrite_pages, swap_index_roots

pytestmark = pytest.mark.integration


def db_of(state_dir: Path) -> Path:
    return state_dir / "jobs.sqlite3"


# -- read-only commands --------------------------------------------------------------------


def test_list_and_status_on_a_missing_store_create_nothing(capsys, tmp_path, monkeypatch):
    state = tmp_path / "never-made"
    monkeypatch.setenv("HOMEOPS_STATE_DIR", str(state))
    code, out, _ = run_main(capsys, "jobs", "list")
    assert (code, out.strip()) == (0, "no jobs")
    code, out, _ = run_main(capsys, "jobs", "list", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, _, err = run_main(capsys, "jobs", "status", "abc123")
    assert code == 2
    assert "no such job: abc123" in err
    assert not state.exists()


def test_cancel_of_an_unknown_job_on_a_missing_store_creates_nothing(capsys, tmp_path, monkeypatch):
    state = tmp_path / "never-made"
    monkeypatch.setenv("HOMEOPS_STATE_DIR", str(state))
    code, _, err = run_main(capsys, "jobs", "cancel", "abc123")
    assert code == 2
    assert "no such job: abc123" in err
    assert not state.exists()


def test_sigterm_ends_the_worker_even_when_a_handler_thread_ignores_it(state_dir, tmp_path):
    # A handler blocked in asyncio.to_thread cannot be cancelled: after its job is handed
    # back the process must still end (before, it stayed alive running the work).
    with SqliteJobQueue(db_of(state_dir)) as q:
        job = q.enqueue("t.block", {"sleep": 120})
    err_path = tmp_path / "worker.err"
    env = {**os.environ, "HOMEOPS_STATE_DIR": str(state_dir), "HOMEOPS_JOBS_GRACE": "200ms"}
    script = Path(__file__).with_name("blocking_worker_cli.py")
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), "jobs", "worker", "--slots", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=Path(__file__).parents[2],
        )
    try:
        for _ in range(300):  # up to 30 s for the job to start
            if f"started {job.id}" in err_path.read_text():
                break
            if proc.poll() is not None:
                break
            import time

            time.sleep(0.1)
        assert f"started {job.id}" in err_path.read_text(), err_path.read_text()
        proc.send_signal(15)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("worker still alive 20 s after SIGTERM with a lingering handler thread")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, err_path.read_text()
    log = err_path.read_text()
    assert "exiting without them" in log
    with SqliteJobQueue(db_of(state_dir), readonly=True) as q:
        back = q.get(job.id)
    assert back.state.value == "queued"
    assert back.attempts == 0


def test_list_and_status_take_no_write_lock_and_keep_the_mode(capsys, state_dir, monkeypatch):
    with SqliteJobQueue(db_of(state_dir)) as q:
        job = q.enqueue("t.x", {})
    os.chmod(db_of(state_dir), 0o640)
    holder = sqlite3.connect(db_of(state_dir), isolation_level=None)
    try:
        # Another process is mid-write: readers must not queue behind it for the lock.
        holder.execute("BEGIN IMMEDIATE")
        code, out, err = run_main(capsys, "jobs", "list", "--json")
        assert code == 0, err
        assert [j["id"] for j in json.loads(out)] == [job.id]
        code, out, err = run_main(capsys, "jobs", "status", job.id, "--json")
        assert code == 0, err
        assert json.loads(out)["state"] == "queued"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert stat.S_IMODE(db_of(state_dir).stat().st_mode) == 0o640


# -- corrupt stores ------------------------------------------------------------------------


def test_doctor_fails_a_corrupt_store(capsys, state_dir):
    # Only the index `jobs list` walks is damaged: counting jobs still works.
    fill_store(db_of(state_dir))
    overwrite_leaves(db_of(state_dir), "jobs_created")
    code, _, err = run_main(capsys, "jobs", "list")
    assert code == 1
    assert "malformed" in err
    code, out, _ = run_main(capsys, "doctor", "--json")
    assert code == 3
    [store] = [c for c in json.loads(out)["checks"] if c["name"] == "job_store"]
    assert store["status"] == "fail"
    assert "corrupt" in store["detail"]


def test_jobs_check_ok_missing_and_broken_index(capsys, state_dir):
    code, out, _ = run_main(capsys, "jobs", "check")
    assert (code, out.strip()) == (0, f"ok: {db_of(state_dir)} (not created yet)")
    assert not db_of(state_dir).exists()
    fill_store(db_of(state_dir), 20)
    code, out, _ = run_main(capsys, "jobs", "check", "--json")
    assert code == 0
    assert json.loads(out) == {
        "path": str(db_of(state_dir)),
        "exists": True,
        "ok": True,
        "problems": [],
    }
    swap_index_roots(db_of(state_dir))
    # doctor's quick_check does not compare indexes with their rows; jobs check does.
    code, out, _ = run_main(capsys, "jobs", "check")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"corrupt: {db_of(state_dir)}"
    assert "missing from index" in lines[1]
    assert len(lines) <= 12
    code, out, _ = run_main(capsys, "jobs", "check", "--json")
    report = json.loads(out)
    assert code == 1
    assert not report["ok"]
    assert len(report["problems"]) > 10


def test_jobs_check_of_overwritten_pages(capsys, state_dir):
    fill_store(db_of(state_dir))
    overwrite_pages(db_of(state_dir))
    code, out, _ = run_main(capsys, "jobs", "check", "--json")
    assert code == 1
    assert json.loads(out)["problems"]
    code, _, err = run_main(capsys, "jobs", "list")
    assert code == 1
    assert "malformed" in err
    assert len(err.strip().splitlines()) == 1


def expire_all_leases(path: Path) -> None:
    """Every job running under a lease that ran out: the next claim must read their rows."""
    with SqliteJobQueue(path) as q:
        assert q.claim("gone", 1000, 30.0)
    raw = sqlite3.connect(path)
    try:
        with raw:
            raw.execute("UPDATE jobs SET lease_until = lease_until - 3600")
    finally:
        raw.close()


def overwrite_leaves(path: Path, name: str) -> None:
    """Bytes overwritten in the leaf pages of one table or index; the rest stays readable."""
    raw = sqlite3.connect(path)
    try:
        pages = [
            n
            for (n,) in raw.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (name,)
            )
        ]
        size = raw.execute("PRAGMA page_size").fetchone()[0]
    finally:
        raw.close()
    assert pages
    with path.open("r+b") as fh:
        for n in pages:
            fh.seek((n - 1) * size)
            fh.write(b"\x5a" * 64)


def test_drain_worker_on_a_corrupt_store_exits_with_an_error(state_dir):
    fill_store(db_of(state_dir))
    expire_all_leases(db_of(state_dir))
    overwrite_leaves(db_of(state_dir), "jobs")
    env = {**os.environ, "HOMEOPS_STATE_DIR": str(state_dir)}
    # The timeout only turns "loops forever" into a failure instead of a hung suite.
    proc = subprocess.run(
        [HOMEOPS, "jobs", "worker", "--drain"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: jobs database ")
    assert "malformed" in last
    assert "job store is corrupt; stopping the worker" in proc.stderr


# -- --payload -----------------------------------------------------------------------------


def test_payload_from_a_file_and_from_stdin(capsys, state_dir, tmp_path, monkeypatch):
    src = tmp_path / "payload.json"
    src.write_text('{"retention_days": 3}')
    code, out, err = run_main(capsys, "jobs", "enqueue", SWEEP, "--payload", f"@{src}")
    assert code == 0, err
    with SqliteJobQueue(db_of(state_dir), readonly=True) as q:
        assert q.get(out.strip()).payload == {"retention_days": 3}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"retention_days": 5}')))
    code, out, err = run_main(capsys, "jobs", "enqueue", SWEEP, "--payload", "-")
    assert code == 0, err
    with SqliteJobQueue(db_of(state_dir), readonly=True) as q:
        assert q.get(out.strip()).payload == {"retention_days": 5}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda d: '{"a": 1, "a": 2}', "duplicate key 'a'", id="duplicate-inline"),
        pytest.param(
            lambda d: "@" + str(_write(d / "dup.json", b'{"x": {"b": 1, "b": 1}}')),
            "duplicate key 'b'",
            id="duplicate-file",
        ),
        pytest.param(lambda d: "@" + str(_fifo(d / "fifo")), "not a regular file", id="fifo"),
        pytest.param(lambda d: "@" + str(d), "not a regular file", id="directory"),
        pytest.param(lambda d: "@" + str(d / "absent.json"), "No such file", id="missing"),
        pytest.param(lambda d: "@", "a file name must follow '@'", id="bare-at"),
        pytest.param(lambda d: "", "not valid JSON", id="empty"),
        pytest.param(
            lambda d: "@" + str(_write(d / "bin.json", b"\xff\xfe{}")), "not UTF-8", id="binary"
        ),
        pytest.param(
            lambda d: "@" + str(_write(d / "big.json", b" " * (2 << 20))),
            "larger than",
            id="too-big",
        ),
        pytest.param(lambda d: '{"n": NaN}', "NaN is not valid JSON", id="nan"),
    ],
)
def test_bad_payload_exits_2_with_one_line(capsys, state_dir, tmp_path, make, message):
    code, out, err = run_main(capsys, "jobs", "enqueue", "t.x", "--payload", make(tmp_path))
    assert code == 2
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not db_of(state_dir).exists()


def test_oversized_stdin_payload_is_refused(capsys, state_dir, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b" " * (2 << 20))))
    code, _, err = run_main(capsys, "jobs", "enqueue", "t.x", "--payload", "-")
    assert code == 2
    assert "larger than" in err


def test_stdin_payload_with_stdin_closed_is_one_line(capsys, state_dir, monkeypatch):
    # `homeops jobs enqueue T --payload - <&-`: Python starts with sys.stdin None.
    monkeypatch.setattr(sys, "stdin", None)
    code, out, err = run_main(capsys, "jobs", "enqueue", SWEEP, "--payload", "-")
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == ["error: --payload -: stdin is closed"]
    assert not db_of(state_dir).exists()


def test_stdin_payload_closed_in_a_real_process(state_dir):
    # The shell's `<&-`: descriptor 0 closed before homeops starts.
    result = subprocess.run(
        ["/bin/sh", "-c", 'exec "$0" jobs enqueue "$1" --payload - <&-', HOMEOPS, SWEEP],
        capture_output=True,
        text=True,
        env={**os.environ, "HOMEOPS_STATE_DIR": str(state_dir)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: --payload -: stdin is closed"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "args", [["jobs", "list"], ["jobs", "check"], ["jobs", "enqueue", SWEEP], ["doctor"]]
)
def test_dangling_symlink_as_the_store_is_one_answer(capsys, state_dir, monkeypatch, args):
    link = state_dir / "jobs.sqlite3"
    link.symlink_to(state_dir / "gone" / "jobs.sqlite3")
    code, out, err = run_main(capsys, *args)
    assert code in (1, 3), err
    said = out + err  # doctor reports it in its table
    assert "is a symlink to" in said
    assert "which does not exist" in said
    assert link.is_symlink()
    assert not (state_dir / "gone").exists()


def test_drain_says_when_jobs_of_other_types_are_still_queued(capsys, state_dir):
    with SqliteJobQueue(db_of(state_dir)) as q:
        for _ in range(3):
            q.enqueue("t.unserved", {})
    code, _, err = run_main(capsys, "jobs", "worker", "--drain")
    assert code == 0, err
    assert "3 queued job(s) of other types wait for a worker that runs them" in err
    assert "no jobs left; stopping" not in err
