"""The CLI frame end to end: the real console script for a few paths, main() for the rest."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from homeops.cli import main
from homeops.core.cli.common import GlobalOptions, split_global_options
from homeops.core.jobs.sqlite import SqliteJobQueue

HOMEOPS = str(Path(sys.executable).with_name("homeops"))


def _spawn(state_dir, *args):
    """The real console script as a child process, for tests that send it signals."""
    env = {**os.environ, "HOMEOPS_STATE_DIR": str(state_dir)}
    return subprocess.Popen(
        [HOMEOPS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def run_main(capsys, *args):
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "opts", "rest"),
    [
        pytest.param(
            ["--config", "a.json", "doctor"], GlobalOptions(Path("a.json")), ["doctor"], id="before"
        ),
        pytest.param(
            ["config", "show", "--config", "a.json"],
            GlobalOptions(Path("a.json")),
            ["config", "show"],
            id="after",
        ),
        pytest.param(
            ["doctor", "--config=b.json", "--debug"],
            GlobalOptions(Path("b.json"), True),
            ["doctor"],
            id="equals-and-debug",
        ),
        pytest.param(
            ["jobs", "--", "--config", "x"],
            GlobalOptions(),
            ["jobs", "--", "--config", "x"],
            id="after-double-dash",
        ),
        pytest.param(
            ["--config", "./doctor", "doctor"],
            GlobalOptions(Path("doctor")),
            ["doctor"],
            id="file-named-like-a-command",
        ),
    ],
)
def test_split_global_options(argv, opts, rest):
    assert split_global_options(argv, {"doctor", "config", "show", "jobs"}) == (opts, rest)


def test_version_fast_path(capsys):
    code, out, _ = run_main(capsys, "version", "--json")
    assert code == 0
    assert json.loads(out)["version"]


def test_console_script_help_and_version(state_dir):
    env = {**os.environ, "HOMEOPS_STATE_DIR": str(state_dir)}
    out = subprocess.run(
        [HOMEOPS, "--help"], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert out.returncode == 0
    for word in ("doctor", "config", "jobs", "artifacts", "version", "--config"):
        assert word in out.stdout
    assert out.stderr == ""
    ver = subprocess.run(
        [HOMEOPS, "version"], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert ver.stdout.startswith("homeops ")


HEAVY = ("pydantic", "asyncssh", "httpx", "tenacity", "rich", "sqlite3", "homeops.core.logging")


@pytest.mark.parametrize(
    ("argv", "also_absent"),
    [
        pytest.param(["--help"], (), id="help"),
        pytest.param(["version"], ("typer",), id="version"),
    ],
)
def test_start_up_does_not_import_heavy_libraries(argv, also_absent):
    code = (
        "import sys\n"
        "from homeops.cli import main\n"
        f"sys.argv = ['homeops', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"loaded = sorted(m for m in {(*HEAVY, *also_absent)!r} if m in sys.modules)\n"
        "print('LOADED', loaded, file=sys.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert "LOADED []" in out.stderr
    assert out.stdout  # the help text or the version was printed


def test_doctor_on_defaults(capsys, state_dir):
    code, out, _ = run_main(capsys, "doctor", "--json")
    report = json.loads(out)
    names = [c["name"] for c in report["checks"]]
    assert names[:2] == ["state_dir", "job_store"]
    assert {"tool.ssh", "tool.git", "tool.restic", "tool.nix", "tool.node"} <= set(names)
    assert report["exit_code"] == code
    assert (state_dir / "jobs.sqlite3").exists()
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["state_dir"]["status"] == "ok"
    assert by_name["tool.git"]["status"] == "ok"


def test_doctor_missing_tool_exits_3(capsys, state_dir, monkeypatch, tmp_path):
    # Only git on PATH: every other tool is missing, which is "dependency unavailable".
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "git").symlink_to("/usr/bin/git")
    monkeypatch.setenv("PATH", str(bindir))
    code, out, _ = run_main(capsys, "doctor")
    assert code == 3
    assert "not found on PATH" in out
    assert "tool.git" in out


def test_doctor_unwritable_state_dir(capsys, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("HOMEOPS_STATE_DIR", str(blocker / "state"))
    code, out, _ = run_main(capsys, "doctor", "--only", "core", "--json")
    assert code == 3
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["state_dir"]["status"] == "fail"
    assert "not writable" in checks["state_dir"]["detail"]


def test_doctor_unknown_domain(capsys, state_dir):
    code, _, err = run_main(capsys, "doctor", "--only", "nope")
    assert code == 2
    assert "unknown domain 'nope'" in err


def test_config_show_sources(capsys, state_dir, tmp_path, monkeypatch):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"jobs": {"slots": 4}}))
    monkeypatch.setenv("HOMEOPS_JOBS_LEASE", "1m")
    code, out, _ = run_main(capsys, "config", "show", "--json", "--config", str(cfg))
    assert code == 0
    data = json.loads(out)
    assert data["config_file"] == str(cfg)
    settings = data["settings"]
    assert settings["jobs.slots"] == {"value": 4, "source": f"file:{cfg}"}
    assert settings["jobs.lease"] == {"value": "1m", "source": "env:HOMEOPS_JOBS_LEASE"}
    assert settings["state_dir"]["source"] == "env:HOMEOPS_STATE_DIR"
    assert settings["jobs.max_attempts"]["source"] == "default"


def test_config_show_table(capsys, state_dir):
    code, out, _ = run_main(capsys, "config", "show")
    assert code == 0
    assert out.splitlines()[0].split() == ["SETTING", "VALUE", "SOURCE"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            '{"jobs": {"slots": 0}}',
            "jobs.slots: Input should be greater than or equal to 1",
            id="range",
        ),
        pytest.param(
            '{"jobs": {"lease": "forever"}}',
            "jobs.lease: invalid duration 'forever'",
            id="duration",
        ),
        pytest.param('{"jobs": ', "invalid JSON at line 1 column 10", id="malformed"),
        pytest.param('{"job": {}}', 'job: unknown key (did you mean "jobs"?)', id="unknown"),
    ],
)
def test_config_errors_exit_2(capsys, state_dir, tmp_path, content, message):
    cfg = tmp_path / "bad.json"
    cfg.write_text(content)
    code, out, err = run_main(capsys, "--config", str(cfg), "config", "show")
    assert code == 2
    assert out == ""
    assert err.strip() == f"config error: {cfg}: {message}" or err.strip().startswith(
        f"config error: {cfg}: {message}"
    )
    assert len(err.strip().splitlines()) == 1


def test_config_env_var_error_names_variable(capsys, state_dir, monkeypatch):
    monkeypatch.setenv("HOMEOPS_JOBS_SLOTS", "many")
    code, _, err = run_main(capsys, "config", "show")
    assert code == 2
    assert err.startswith("config error: HOMEOPS_JOBS_SLOTS: jobs.slots: ")


def test_jobs_commands(capsys, state_dir):
    queue = SqliteJobQueue(state_dir / "jobs.sqlite3")
    try:
        job = queue.enqueue("builds.build", {"flake": ".#x"})
    finally:
        queue.close()
    code, out, _ = run_main(capsys, "jobs", "list", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [j["id"] for j in listed] == [job.id]
    assert listed[0]["state"] == "queued"

    code, out, _ = run_main(capsys, "jobs", "status", job.id, "--json")
    assert json.loads(out)["payload"] == {"flake": ".#x"}

    code, out, _ = run_main(capsys, "jobs", "cancel", job.id)
    assert code == 0
    assert out.strip() == f"{job.id}: cancelled"

    code, out, _ = run_main(capsys, "jobs", "list", "--state", "cancelled")
    assert job.id in out
    code, out, _ = run_main(capsys, "jobs", "cancel", job.id)
    assert "already cancelled" in out


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a b", ""])
def test_jobs_bad_id_exit_2(capsys, state_dir, bad):
    code, out, err = run_main(capsys, "jobs", "status", bad)
    assert code == 2
    assert out == ""
    assert "invalid job id" in err


def test_jobs_unknown_id_exit_2(capsys, state_dir):
    code, _, err = run_main(capsys, "jobs", "status", "nope123")
    assert code == 2
    assert "nope123" in err


def test_jobs_bad_state_exit_2(capsys, state_dir):
    code, _, err = run_main(capsys, "jobs", "list", "--state", "done")
    assert code == 2
    assert "unknown state 'done'" in err


async def _add(store, job_id):
    await store.add_bytes(job_id, "stdout.txt", b"hello\n", type="ssh")


def test_artifacts_commands(capsys, state_dir, tmp_path):
    import asyncio

    from homeops.core.artifacts import ArtifactStore

    store = ArtifactStore(state_dir / "artifacts")
    store.ensure_job("job1", "trace1")
    asyncio.run(_add(store, "job1"))
    code, out, _ = run_main(capsys, "artifacts", "list", "--job", "job1", "--json")
    assert code == 0
    manifest = json.loads(out)
    assert manifest["trace_id"] == "trace1"
    assert manifest["artifacts"][0]["path"] == "stdout.txt"
    out_dir = tmp_path / "out"
    code, out, _ = run_main(capsys, "artifacts", "fetch", "--job", "job1", "--out", str(out_dir))
    assert code == 0
    assert (out_dir / "stdout.txt").read_bytes() == b"hello\n"
    code, _, err = run_main(capsys, "artifacts", "fetch", "--job", "../job1", "--out", str(out_dir))
    assert code == 2
    assert "invalid job id" in err


def test_unknown_command_exit_2(capsys):
    code, _, err = run_main(capsys, "bogus")
    assert code == 2
    assert "No such command" in err


def test_supervise_once_with_failpoint(capsys, state_dir):
    code, out, _ = run_main(capsys, "supervise", "--once", "--failpoint", "tool.git", "--json")
    assert code == 3
    report = json.loads(out)
    assert report["ok"] is False
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["tool.git"]
    assert failed[0]["detail"] == "failpoint"


def test_supervise_failpoint_from_env(capsys, state_dir, monkeypatch):
    monkeypatch.setenv("HOMEOPS_SUPERVISOR_FAILPOINT", "state_dir")
    code, out, _ = run_main(capsys, "supervise", "--once")
    assert code == 3
    assert "failpoint" in out


def test_supervise_unknown_failpoint(capsys, state_dir):
    code, _, err = run_main(capsys, "supervise", "--once", "--failpoint", "nope")
    assert code == 2
    assert "unknown failpoint 'nope'" in err


def test_supervise_loop_stops_on_sigterm(state_dir):
    import signal

    proc = _spawn(
        state_dir, "supervise", "--interval", "100ms", "--json", "--only", "core", "--debug"
    )
    try:
        first = proc.stdout.readline()  # a pass is done: the loop is running
        assert json.loads(first)["ok"] is True
        time.sleep(0.5)  # room for a few more passes
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert 'msg="supervisor stopped"' in err
    # It kept passing (each pass is a debug line) but printed only the first: nothing changed.
    assert err.count('msg="supervisor pass done"') >= 2
    assert rest == ""


def test_artifacts_fetch_out_is_a_file(capsys, state_dir, tmp_path):
    import asyncio

    from homeops.core.artifacts import ArtifactStore

    store = ArtifactStore(state_dir / "artifacts")
    store.ensure_job("job1", "t")
    asyncio.run(store.add_bytes("job1", "sub/out.txt", b"x", type="ssh"))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, err = run_main(capsys, "artifacts", "fetch", "--job", "job1", "--out", str(blocker))
    assert code == 2
    assert err.strip() == f"error: {blocker}: exists and is not a directory"
    out = tmp_path / "o2"
    out.mkdir()
    (out / "sub").write_text("in the way")
    code, _, err = run_main(capsys, "artifacts", "fetch", "--job", "job1", "--out", str(out))
    assert code == 2
    assert "sub: exists and is not a directory" in err


def test_artifacts_root_is_a_file(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "state"
    blocker.mkdir()
    (blocker / "artifacts").write_text("x")
    monkeypatch.setenv("HOMEOPS_STATE_DIR", str(blocker))
    for args in (("artifacts", "list"), ("artifacts", "sweep")):
        code, _, err = run_main(capsys, *args)
        assert code == 1
        assert "cannot list artifacts: Not a directory" in err


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_artifacts_sweep_refuses_odd_retention(capsys, state_dir, value):
    code, _, err = run_main(capsys, "artifacts", "sweep", "--retention-days", value)
    assert code == 2
    assert err.strip()


def test_enqueue_and_drain_with_metrics(capsys, state_dir, tmp_path):
    from homeops.core.artifacts import ArtifactStore

    store = ArtifactStore(state_dir / "artifacts")
    store.ensure_job("old1", "t")
    code, out, _ = run_main(
        capsys, "jobs", "enqueue", "core.artifacts-sweep", "--payload", '{"retention_days": 0}'
    )
    assert code == 0
    sweep_id = out.strip()
    # Stored past enqueue's check (an old job, or written by hand): the worker refuses it too.
    with SqliteJobQueue(state_dir / "jobs.sqlite3") as q:
        bad_id = q.enqueue("core.artifacts-sweep", {"retention_days": -1}).id
    code, out, err = run_main(capsys, "jobs", "worker", "--drain", "--metrics")
    assert code == 0, err
    lines = dict(line.split(" ")[0:2] for line in out.splitlines())
    assert lines["metric=jobs_completed_total"] == "value=1"
    assert lines["metric=jobs_failed_total"] == "value=1"
    code, out, _ = run_main(capsys, "jobs", "status", sweep_id, "--json")
    job = json.loads(out)
    assert job["state"] == "succeeded"
    assert job["result"]["removed"] == ["old1"]
    code, out, _ = run_main(capsys, "jobs", "status", bad_id, "--json")
    failed = json.loads(out)
    # A payload its model refuses can never run: failed at once, not retried.
    assert (failed["state"], failed["attempts"]) == ("failed", 1)
    assert failed["error"] == (
        "stored payload for job type 'core.artifacts-sweep': "
        "retention_days: Input should be greater than or equal to 0"
    )


def test_enqueue_dedupes_by_idempotency_key(capsys, state_dir):
    ids = set()
    for _ in range(2):
        code, out, _ = run_main(
            capsys, "jobs", "enqueue", "core.artifacts-sweep", "--idempotency-key", "nightly-1"
        )
        assert code == 0
        ids.add(out.strip())
    assert len(ids) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["Bad/Type"], "invalid job type", id="type"),
        pytest.param(["a.b", "--payload", "[1]"], "must be a JSON object", id="payload-list"),
        pytest.param(["a.b", "--payload", "{"], "not valid JSON", id="payload-json"),
        pytest.param(["a.b", "--payload", "[" * 100000], "not valid JSON", id="payload-deep"),
        pytest.param(["a.b", "--timeout", "nan"], "--timeout: invalid duration", id="timeout"),
        pytest.param(["a.b", "--idempotency-key", "../x"], "invalid", id="key"),
    ],
)
def test_enqueue_bad_input_exit_2(capsys, state_dir, args, message):
    code, out, err = run_main(capsys, "jobs", "enqueue", *args)
    assert code == 2
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_worker_stops_on_sigterm(state_dir):
    import signal

    proc = _start_worker(state_dir)
    try:
        _wait_for_line(proc.stderr, "worker started")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert 'msg="worker stopped"' in err


def _start_worker(state_dir, *extra):
    return _spawn(state_dir, "jobs", "worker", *extra)


def _wait_for_line(stream, needle, limit=400):
    for _ in range(limit):
        line = stream.readline()
        if needle in line:
            return line
        if not line:
            break
    raise AssertionError(f"{needle!r} never logged")


def test_worker_waits_for_a_locked_store_and_stops_cleanly(state_dir):
    import signal
    import sqlite3

    db = state_dir / "jobs.sqlite3"
    SqliteJobQueue(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    # A short busy timeout would do, but the real one is 10 s: the worker must not give up
    # (exit 1) nor ignore SIGTERM while it waits.
    proc = _start_worker(state_dir)
    try:
        _wait_for_line(proc.stderr, "job store is locked; retrying", limit=2000)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err


def test_second_signal_during_shutdown_does_not_kill(state_dir):
    import signal

    proc = _start_worker(state_dir, "--metrics", "--metrics-interval", "1h")
    try:
        _wait_for_line(proc.stderr, "worker started")
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    # The final metrics block was written despite the extra signals.
    assert "metric=jobs_completed_total value=0" in out


def test_worker_refuses_unwritable_metrics_path(capsys, state_dir, monkeypatch):
    monkeypatch.setenv("HOMEOPS_METRICS_PATH", "/nonexistent/dir/metrics.log")
    code, _, err = run_main(capsys, "jobs", "worker", "--drain", "--metrics")
    assert code == 2
    assert "metrics.path: /nonexistent/dir is not a directory" in err


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda p: p.mkdir(), "is not a regular file", id="directory"),
        pytest.param(lambda p: os.mkfifo(p), "is not a regular file", id="fifo"),
        pytest.param(lambda p: p.symlink_to("/etc/hostname"), "is a symlink", id="symlink"),
    ],
)
def test_worker_refuses_a_metrics_path_that_would_lose_every_block(
    capsys, state_dir, monkeypatch, tmp_path, make, reason
):
    path = tmp_path / "metrics.log"
    make(path)
    monkeypatch.setenv("HOMEOPS_METRICS_PATH", str(path))
    code, out, err = run_main(capsys, "jobs", "worker", "--drain", "--metrics")
    assert (code, out) == (2, "")
    assert err.strip() == f"error: metrics.path: {path} {reason}"


@pytest.mark.parametrize("command", ["sweep", "gc"])
def test_sweep_spares_unfinished_jobs(capsys, state_dir, command):
    from homeops.core.artifacts import ArtifactStore

    queue = SqliteJobQueue(state_dir / "jobs.sqlite3")
    try:
        active = queue.enqueue("builds.build", {})
        done = queue.enqueue("builds.build", {})
        queue.cancel(done.id)
    finally:
        queue.close()
    store = ArtifactStore(state_dir / "artifacts")
    for job_id in (active.id, done.id, "orphan1"):
        store.ensure_job(job_id, "t")
    code, out, _ = run_main(capsys, "artifacts", command, "--retention-days", "0", "--json")
    assert code == 0
    assert sorted(json.loads(out)["removed"]) == sorted([done.id, "orphan1"])
    assert store.list_jobs() == [active.id]


@pytest.mark.parametrize(
    ("value", "reason"),
    [("nan", "not a number"), ("-1", "must be >= 0"), ("inf", "finite number")],
)
def test_artifacts_gc_refuses_a_retention_that_is_no_age(capsys, state_dir, value, reason):
    code, out, err = run_main(capsys, "artifacts", "gc", "--retention-days", value)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and reason in err


def test_a_huge_job_id_is_not_echoed_whole(capsys, state_dir):
    code, _, err = run_main(capsys, "jobs", "status", "a" * 100_000)
    assert code == 2
    assert "(100000 chars)" in err and len(err) < 400
