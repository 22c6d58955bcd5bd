"""``svc backup`` against the real restic (Debian's 0.14), a local repository per test.

The command runs in-process (``run_console("svc", ...)``) except where a signal must reach
it (SIGINT mid-backup: a subprocess). Hooks append to a log file, so each test sees the
order things ran in. The docker side (volumes, stop during backup) is in
test_backup_docker.py; this file imports nothing from docker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from homeops.cli import run_console
from homeops.core.jobs.model import Job, JobState
from homeops.core.jobs.store import open_store_at
from homeops.services import backup_flow
from homeops.services import repo as repo_module
from homeops.services import restic as r
from homeops.services.jobs import BACKUP, BackupPayload
from homeops.services.settings import SvcSettings

RESTIC = shutil.which("restic")
needs_restic = pytest.mark.skipif(
    RESTIC is None, reason="restic is not installed (apt-get install -y restic)"
)
SVC = str(Path(sys.executable).parent / "svc")
PASSWORD = "correct horse battery staple"
# Where forget is not what a test is about: skip it (forget --prune costs ~0.7 s a run).
NO_FORGET = {"daily": 0, "weekly": 0, "monthly": 0}
# A sparse file restic reads for minutes (zeros, deduplicated: the repository stays small),
# so a signal sent once its first status line is out lands mid-backup.
SPARSE_SIZE = 64 * 2**30


def restic_env(repo: Path, password: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update(
        RESTIC_REPOSITORY=str(repo),
        RESTIC_PASSWORD_FILE=str(password),
        RESTIC_CACHE_DIR=str(cache),
    )
    return env


@pytest.fixture(scope="session")
def restic_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised repository per session (``init`` derives a key: ~1 s); tests copy it."""
    return make_template(tmp_path_factory)


_templates: list[Path] = []


def make_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised repository and its password file, made once per test process (the
    docker tests share it)."""
    if _templates:
        return _templates[0]
    if RESTIC is None:
        pytest.skip("restic is not installed (apt-get install -y restic)")
    root = tmp_path_factory.mktemp("svc-restic-template")
    password = root / "password"
    password.write_text(PASSWORD + "\n")
    done = subprocess.run(
        [RESTIC, "init"],
        env=restic_env(root / "repo", password, root / "cache"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    _templates.append(root)
    return root


@dataclass
class SvcWorld:
    """A services.json with a local repository, and ways to look at what svc did."""

    root: Path
    state: Path
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def password(self) -> Path:
        return self.root / "password"

    @property
    def config(self) -> Path:
        return self.root / "services.json"

    @property
    def hook_log(self) -> Path:
        return self.root / "hooks.log"

    def service(self, name: str, **backup: Any) -> dict[str, Any]:
        """Add a service whose backup is enabled with ``backup``'s keys."""
        record: dict[str, Any] = {"backup": {"enable": True, **backup}}
        self.settings["services"][name] = record
        return record

    def logging_hooks(self) -> dict[str, str]:
        """pre/post hooks that append what they saw to :attr:`hook_log`."""
        log = self.hook_log
        return {
            "pre": f'echo "pre $SVC_SERVICE $SVC_REPO $SVC_HOOK" >> {log}',
            "post": f'echo "post $SVC_SERVICE $SVC_BACKUP_STATE $SVC_SNAPSHOT_ID" >> {log}',
        }

    def hooks_ran(self) -> list[str]:
        return self.hook_log.read_text().splitlines() if self.hook_log.exists() else []

    def write(self) -> Path:
        self.config.write_text(json.dumps(self.settings, indent=2))
        return self.config

    def svc(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        """``svc --config services.json ARGS`` in this process: exit code, stdout, stderr."""
        self.write()
        capsys.readouterr()
        try:
            code = run_console("svc", ["--config", str(self.config), *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    def svc_settings(self) -> SvcSettings:
        return SvcSettings.model_validate(self.settings)

    def restic_env(self) -> dict[str, str]:
        return restic_env(self.repo, self.password, self.root / "cache")

    def restic(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert RESTIC is not None
        return subprocess.run(
            [RESTIC, *args],
            env=self.restic_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def snapshots(self, tag: str | None = None) -> list[dict[str, Any]]:
        done = self.restic("snapshots", "--json", *([f"--tag={tag}"] if tag else []))
        assert done.returncode == 0, done.stderr
        return sorted(json.loads(done.stdout or "[]"), key=lambda s: s["time"])

    def locks(self) -> list[str]:
        """The repository's locks. A ``<id>-tmp-<n>`` file is one being written (restic
        writes a temp file, then renames it): it locks nothing, and restic, listing locks by
        id, skips one left by a restic killed mid-write."""
        return sorted(
            p.name for p in (self.repo / "locks").iterdir() if re.fullmatch("[0-9a-f]{64}", p.name)
        )

    def jobs(self) -> list[Job]:
        store = open_store_at(self.state / "jobs.sqlite3")
        try:
            return sorted(store.list(type=BACKUP), key=lambda j: j.created_at)
        finally:
            store.close()

    def artifact(self, job: Job, rel: str) -> Path:
        return self.state / "artifacts" / job.id / rel

    def manifest(self, job: Job) -> dict[str, dict[str, Any]]:
        data = json.loads(self.artifact(job, "manifest.json").read_text())
        return {a["path"]: a for a in data["artifacts"]}


def make_world(root: Path, template: Path, state: Path) -> SvcWorld:
    """A copy of the template repository under ``root`` and settings pointing at it."""
    shutil.copytree(template / "repo", root / "repo")
    shutil.copy(template / "password", root / "password")
    world = SvcWorld(root, state)
    world.settings = {
        "systemd": "never",
        "services_root": str(root / "services"),
        "repositories": {
            "local": {
                "repository": str(world.repo),
                "password_file": str(world.password),
                "cache_dir": str(root / "cache"),
            }
        },
        "services": {},
    }
    return world


@pytest.fixture
def world(restic_template: Path, tmp_path: Path, state_dir: Path) -> SvcWorld:
    return make_world(tmp_path / "world", restic_template, state_dir)


def tree(root: Path) -> Path:
    """Two files worth saving (6 + 20,000 bytes) and a log file to exclude."""
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(20_000))
    (root / "debug.log").write_text("noise\n")
    return root


def sparse_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    with (root / "big.img").open("wb") as f:
        f.truncate(SPARSE_SIZE)
    return root


class LineReader:
    """Reads a process's stream on a thread, so a test can wait for one line with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; got:\n" + "\n".join(self.lines))

    def rest(self, timeout: float) -> list[str]:
        self._thread.join(timeout)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return self.lines
            if line is not None:
                self.lines.append(line)


# -- the job payload (pure) ------------------------------------------------------------------


def test_payload_is_strict():
    payload = BackupPayload.model_validate_json('{"repo": "local", "service": "app"}', strict=True)
    assert payload.model_dump() == {
        "repo": "local",
        "service": "app",
        "dry_run": False,
        "retry_lock_s": None,
    }
    for bad in (
        {"repo": "offsite", "service": "app"},
        {"repo": "local", "service": "App Name"},
        {"repo": "local", "service": "app", "retry_lock_s": 0},
        {"repo": "local", "service": "app", "paths": ["/etc"]},
        {"service": "app"},
    ):
        with pytest.raises(ValidationError):
            BackupPayload.model_validate_json(json.dumps(bad), strict=True)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        pytest.param(
            r.BackupStatus(files_done=3, total_files=10, bytes_done=1536, total_bytes=2**20),
            "3/10 files, 1.5 KiB/1.0 MiB",
            id="totals-known",
        ),
        pytest.param(r.BackupStatus(files_done=1, bytes_done=10), "1 files, 10 B", id="scanning"),
        pytest.param(
            r.BackupStatus(files_done=1, total_files=2, total_bytes=5, seconds_remaining=7),
            "1/2 files, 0 B/5 B, 7s left",
            id="eta",
        ),
    ],
)
def test_progress_message(status, message):
    assert backup_flow.progress_message(status) == message


# -- usage errors: nothing is queued ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(("offsite", "app"), "repository must be 'local' or 'remote'", id="repo-name"),
        pytest.param(("local", "nope"), "no service 'nope' in the config", id="unknown"),
        pytest.param(("local", "off"), "off: backup is not enabled", id="not-enabled"),
        pytest.param(("remote", "app"), "repositories.remote: no repository", id="no-remote"),
        pytest.param(("local", "app", "--retry-lock", "soon"), "--retry-lock", id="duration"),
    ],
)
def test_usage_errors_exit_2_and_queue_nothing(world, capsys, args, says):
    world.service("app", paths=["/srv/app"])
    world.settings["services"]["off"] = {"backup": {"enable": False}}
    code, out, err = world.svc(capsys, "backup", *args, "--json")
    assert code == 2, err
    assert says in json.loads(out)["error"]
    assert world.jobs() == []


# -- the real restic -------------------------------------------------------------------------


@pytest.mark.integration
@needs_restic
def test_backup_saves_paths_tagged_with_excludes_and_keeps_the_job(world, capsys, monkeypatch):
    monkeypatch.delenv("TZ", raising=False)  # restic's zone known: forget may be skipped
    src = tree(world.root / "src")
    world.service(
        "app", paths=[str(src)], tags=["media"], exclude=["*.log"], **world.logging_hooks()
    )
    code, out, err = world.svc(capsys, "backup", "local", "app", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["ok"], data["repo"], data["interrupted"]) == (True, "local", None)
    [row] = data["services"]
    assert (row["service"], row["state"], row["error"]) == ("app", "ok", None)
    assert row["files"] == 2  # a.txt, sub/b.bin; debug.log excluded
    assert row["bytes"] == 20_006

    [snapshot] = world.snapshots()
    assert snapshot["tags"] == ["app", "media"]
    assert snapshot["paths"] == [str(src)]
    assert snapshot["short_id"] == row["snapshot_id"]  # 0.14's summary has the short id
    listed = world.restic("ls", "--json", "latest").stdout.splitlines()
    files = sorted(json.loads(line)["path"] for line in listed[1:] if '"type":"file"' in line)
    assert files == [f"{src}/a.txt", f"{src}/sub/b.bin"]
    assert world.hooks_ran() == ["pre app local pre", f"post app ok {row['snapshot_id']}"]

    [job] = world.jobs()
    assert (job.state, job.attempts, job.max_attempts) == (JobState.SUCCEEDED, 1, 1)
    assert job.payload == {
        "repo": "local",
        "service": "app",
        "dry_run": False,
        "retry_lock_s": None,
    }
    assert row["job_id"] == job.id
    result = job.result
    # What `svc list` reads without calling restic.
    assert {k: result[k] for k in ("repo", "service", "state", "snapshot_id", "files")} == {
        "repo": "local",
        "service": "app",
        "state": "ok",
        "snapshot_id": row["snapshot_id"],
        "files": 2,
    }
    assert result["bytes"] == 20_006 and result["data_added"] > 20_000
    assert result["finished_at"] >= result["started_at"]
    assert result["tags"] == ["app", "media"]
    assert result["hooks"]["pre"]["exit_code"] == 0 and result["hooks"]["post"]["exit_code"] == 0
    # The repository's only snapshot: forget could remove nothing and is skipped (below).
    assert result["forget"]["ran"] is False
    assert "restic/summary.json" in world.manifest(job)
    summary = json.loads(world.artifact(job, "restic/summary.json").read_text())
    assert summary["message_type"] == "summary"
    assert summary["snapshot_id"] == row["snapshot_id"]

    code, out, err = world.svc(capsys, "backup", "local", "app", "--json")
    assert code == 0, err
    [row] = json.loads(out)["services"]
    assert (row["forget"]["ran"], row["forget"]["kept"], row["forget"]["removed"]) == (True, 1, 1)
    job = world.jobs()[-1]
    forget = json.loads(world.artifact(job, "restic/forget.json").read_text())
    assert [g["tags"] for g in forget] == [["app", "media"]]


@pytest.mark.integration
@needs_restic
def test_forget_keeps_what_each_services_policy_says(world, capsys):
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)], policy={"daily": 1, "weekly": 0, "monthly": 0})
    world.service("keepall", paths=[str(src)], policy={"daily": 0, "weekly": 0, "monthly": 0})
    code, out, err = world.svc(capsys, "backup", "local", "all", "--json")
    assert code == 0, err
    rows = {row["service"]: row for row in json.loads(out)["services"]}
    assert list(rows) == ["app", "keepall"]  # name order
    assert rows["keepall"]["forget"]["ran"] is False
    assert rows["keepall"]["forget"]["skipped"].startswith("the policy keeps nothing")
    first = rows["app"]["snapshot_id"]

    code, out, err = world.svc(capsys, "backup", "local", "app", "--json")
    assert code == 0, err
    [row] = json.loads(out)["services"]
    assert row["forget"] == {
        "ran": True,
        "dry_run": False,
        "kept": 1,
        "removed": 1,
        "error": None,
        "skipped": None,
    }
    # Both of today's app snapshots fall on one day: the newer is kept. Another service's
    # snapshots are not this policy's to forget.
    assert [s["short_id"] for s in world.snapshots("app")] == [row["snapshot_id"]]
    assert row["snapshot_id"] != first
    assert len(world.snapshots("keepall")) == 1


@pytest.mark.integration
@needs_restic
def test_forget_is_skipped_only_when_the_ledger_proves_it_needless(world, capsys, monkeypatch):
    """A forget is a restic process of its own (~0.6 s of key derivation) holding the
    exclusive lock: it is skipped when every snapshot file is one a recorded job made and the
    policy keeps them all; a snapshot no job recorded (restic run by hand) makes it run."""
    monkeypatch.delenv("TZ", raising=False)
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)], policy={"daily": 7, "weekly": 0, "monthly": 0})
    code, out, err = world.svc(capsys, "backup", "local", "app", "--json")
    assert code == 0, err
    [row] = json.loads(out)["services"]
    assert row["forget"]["ran"] is False
    assert row["forget"]["skipped"] == "nothing to remove: app has one snapshot in the repository"
    [job] = world.jobs()
    assert "restic/forget.json" not in world.manifest(job)
    assert len(job.result["utc_offsets_s"]) == 2

    # With TZ set, restic (Go) may read the zone otherwise (a POSIX rule is UTC to Go): the
    # snapshot's day is not known, so forget runs, and finds nothing to remove today.
    monkeypatch.setenv("TZ", "<-0110>1:10")
    code, out, err = world.svc(capsys, "backup", "local", "app", "--json")
    assert code == 0, err
    [row] = json.loads(out)["services"]
    assert (row["forget"]["ran"], row["forget"]["removed"]) == (True, 1)
    assert world.jobs()[-1].result["utc_offsets_s"] is None
    monkeypatch.delenv("TZ")

    # A snapshot of the service that no job recorded: forget must run and see it.
    made = world.restic("backup", "--tag=app", str(src))
    assert made.returncode == 0, made.stderr
    code, out, err = world.svc(capsys, "backup", "local", "app", "--json")
    assert code == 0, err
    [row] = json.loads(out)["services"]
    # All three left are from today: keep-daily keeps the newest of the day.
    assert (row["forget"]["ran"], row["forget"]["removed"]) == (True, 2)
    assert [s["short_id"] for s in world.snapshots("app")] == [row["snapshot_id"]]


@pytest.mark.integration
@needs_restic
def test_a_failing_pre_hook_means_no_backup(world, capsys):
    src = tree(world.root / "src")
    hooks = world.logging_hooks()
    world.service(
        "app",
        paths=[str(src)],
        pre=f"{hooks['pre']}; echo 'db not ready' >&2; exit 3",
        post=hooks["post"],
    )
    code, _out, err = world.svc(capsys, "backup", "local", "app")
    assert code == 1
    assert "error: app: pre hook failed (exit 3): db not ready" in err
    assert world.snapshots() == []
    # post runs all the same (it may have to undo what pre began), told that it failed.
    assert world.hooks_ran() == ["pre app local pre", "post app failed "]
    [job] = world.jobs()
    assert job.state is JobState.FAILED
    assert job.error is not None and "pre hook failed (exit 3)" in job.error
    assert world.artifact(job, "hooks/pre.stderr.txt").read_text() == "db not ready\n"


@pytest.mark.integration
@needs_restic
def test_wrong_password_fails_and_the_post_hook_still_runs(world, capsys):
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)], **world.logging_hooks())
    wrong = world.root / "wrong-password"
    wrong.write_text("not it\n")
    world.settings["repositories"]["local"]["password_file"] = str(wrong)
    code, out, _err = world.svc(capsys, "backup", "local", "app", "--json")
    assert code == 1
    [row] = json.loads(out)["services"]
    assert row["state"] == "failed"
    assert row["error"].startswith("restic backup: wrong password for the repository")
    assert "check the password file of repository local" in row["error"]
    assert world.hooks_ran() == ["pre app local pre", "post app failed "]
    [job] = world.jobs()
    assert job.state is JobState.FAILED and job.attempts == 1
    assert "wrong password" in world.artifact(job, "restic/stderr.txt").read_text()


@pytest.mark.integration
@needs_restic
def test_missing_repository_suggests_svc_init(world, capsys):
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)])
    world.settings["repositories"]["local"]["repository"] = str(world.root / "nowhere")
    code, _out, err = world.svc(capsys, "backup", "local", "app")
    assert code == 1
    assert "there is no restic repository at" in err
    assert "run `svc init local`" in err


@pytest.mark.integration
@needs_restic
def test_all_goes_on_past_a_failing_service(world, capsys):
    src = tree(world.root / "src")
    world.service("broken", paths=[str(world.root / "gone")], policy=NO_FORGET)
    world.service("fine", paths=[str(src)], policy=NO_FORGET)
    code, out, err = world.svc(capsys, "backup", "local", "all")
    assert code == 1
    assert "error: broken: restic backup: none of the backup paths exist" in err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["SERVICE", "STATE"]
    assert [line.split()[:2] for line in lines[1:]] == [["broken", "failed"], ["fine", "ok"]]
    assert [(j.payload["service"], j.state) for j in world.jobs()] == [
        ("broken", JobState.FAILED),
        ("fine", JobState.SUCCEEDED),
    ]
    assert len(world.snapshots("fine")) == 1


@pytest.mark.integration
@needs_restic
def test_all_with_nothing_enabled_backs_nothing_up(world, capsys):
    world.settings["services"]["off"] = {"backup": {"enable": False}}
    code, out, err = world.svc(capsys, "backup", "local", "all")
    assert code == 0, err
    assert out == "no service has backup.enable; nothing backed up to local\n"
    assert world.jobs() == []


@pytest.mark.integration
@needs_restic
def test_dry_run_saves_nothing_and_runs_no_hook(world, capsys):
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)], **world.logging_hooks())
    code, out, err = world.svc(capsys, "backup", "local", "app", "--dry-run", "--json")
    assert code == 0, err
    [row] = json.loads(out)["services"]
    assert (row["state"], row["dry_run"], row["snapshot_id"]) == ("ok", True, None)
    assert row["files"] == 3
    assert row["forget"]["dry_run"] is True and row["forget"]["removed"] == 0
    assert world.snapshots() == []
    assert world.hooks_ran() == []


@pytest.mark.integration
@needs_restic
def test_locked_repository_is_clear_and_retry_lock_waits_for_it(world, capsys, monkeypatch):
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)], policy=NO_FORGET)
    # `forget` locks the repository exclusively, then blocks opening this FIFO snapshot:
    # a lock held for as long as the test wants.
    fifo = world.repo / "snapshots" / ("f" * 64)
    os.mkfifo(fifo)
    assert RESTIC is not None
    holder = subprocess.Popen(
        [RESTIC, "forget", "--keep-last", "1"],
        env=world.restic_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not world.locks():
            assert time.monotonic() < deadline, "restic forget never took its lock"
            time.sleep(0.02)
        code, _out, err = world.svc(capsys, "backup", "local", "app")
        assert code == 1
        assert f"the repository is exclusively locked by PID {holder.pid} on" in err
        assert "pass --retry-lock" in err

        class ReleaseOnRetry(logging.Handler):
            """Lets the holder go when svc says it will try again, not before."""

            def emit(self, record: logging.LogRecord) -> None:
                if "trying again" in record.getMessage() and holder.poll() is None:
                    fifo.unlink(missing_ok=True)
                    holder.send_signal(signal.SIGINT)  # restic removes its lock on SIGINT

        monkeypatch.setattr(repo_module, "LOCK_RETRY_PAUSE_S", 0.2)
        handler = ReleaseOnRetry()
        logging.getLogger("homeops.services.restic").addHandler(handler)
        try:
            code, _out, err = world.svc(capsys, "backup", "local", "app", "--retry-lock", "30s")
        finally:
            logging.getLogger("homeops.services.restic").removeHandler(handler)
        assert code == 0, err
        assert "repository locked; trying again" in err
        assert len(world.snapshots("app")) == 1
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)
        fifo.unlink(missing_ok=True)


@pytest.fixture
def nobody_world(restic_template: Path, state_dir: Path) -> Iterator[SvcWorld]:
    """A world restic runs in as ``nobody`` (as root nothing is unreadable): tools.restic is
    a wrapper dropping to nobody, everything restic touches belongs to nobody."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run restic as nobody")
    root = Path(tempfile.mkdtemp(prefix="homeops-svc-"))
    root.chmod(0o755)
    try:
        world = make_world(root / "world", restic_template, state_dir)
        wrapper = root / "restic-as-nobody"
        drop = f"{setpriv} --reuid=nobody --regid=nogroup --clear-groups"
        wrapper.write_text(f'#!/bin/sh\nexec {drop} {RESTIC} "$@"\n')
        wrapper.chmod(0o755)
        world.settings["tools"] = {"restic": str(wrapper)}
        yield world
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.root
@needs_restic
def test_exit_3_is_a_warning_naming_the_unreadable_file(nobody_world, capsys):
    world = nobody_world
    src = tree(world.root / "src")
    secret = src / "secret.txt"
    secret.write_text("x\n")
    for path in [world.root, *world.root.rglob("*")]:
        shutil.chown(path, "nobody", "nogroup")
    secret.chmod(0)
    world.service("app", paths=[str(src)], exclude=["*.log"])
    code, out, err = world.svc(capsys, "backup", "local", "app", "--json")
    assert code == 0, err  # the snapshot was saved: the job succeeded, with a warning
    [row] = json.loads(out)["services"]
    assert row["state"] == "partial"
    assert row["unreadable"] == [str(secret)]
    assert row["snapshot_id"]
    assert f"could not be read: {secret}" in row["warnings"][0]
    assert f"warning: app: snapshot saved, but 1 source path(s) could not be read: {secret}" in err
    [job] = world.jobs()
    assert job.state is JobState.SUCCEEDED and job.result["state"] == "partial"
    assert str(secret) in world.artifact(job, "restic/stderr.txt").read_text()


@pytest.mark.integration
@needs_restic
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_backup_stops_cleanly(world, sig, code):
    src = sparse_tree(world.root / "src")
    world.service("app", paths=[str(src)], **world.logging_hooks())
    world.write()
    with subprocess.Popen(
        [SVC, "--config", str(world.config), "backup", "local", "app"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            stderr = LineReader(proc.stderr)
            # The plain renderer's first progress line comes from restic's first status line.
            stderr.wait_for(r"^app: \d+% ", timeout=60)
            proc.send_signal(sig)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.stdout is not None
        out = proc.stdout.read()
        lines = stderr.rest(10)
    assert proc.returncode == code, "\n".join(lines)
    said = f"error: app: restic backup interrupted by {sig.name} (no snapshot was saved)"
    assert said in lines
    assert out.splitlines()[1].split()[:2] == ["app", "failed"]
    assert world.hooks_ran() == ["pre app local pre", "post app interrupted "]
    assert world.snapshots() == []
    assert world.locks() == []  # 0.14 leaves its lock on SIGTERM: svc removed it
    [job] = world.jobs()
    assert job.state is JobState.FAILED and job.attempts == 1
    assert job.error is not None and f"interrupted by {sig.name}" in job.error


@pytest.mark.integration
@needs_restic
async def test_a_cancelled_backup_finishes_its_clean_up_first(world):
    # A daemon worker stopping cancels the handler: restic is killed, its lock removed, the
    # post hook runs, and only then does the cancellation go on.
    src = sparse_tree(world.root / "src")
    world.service("app", paths=[str(src)], **world.logging_hooks())
    settings = world.svc_settings()
    repo = repo_module.Repo.of(settings, "local")
    running = asyncio.Event()
    record = backup_flow.BackupRecord("local", "app")
    task = asyncio.create_task(
        backup_flow.run_backup(
            settings, repo, "app", record=record, on_progress=lambda f, m: running.set()
        )
    )
    await asyncio.wait_for(running.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 60)
    assert world.hooks_ran() == ["pre app local pre", "post app interrupted "]
    assert record.restic_started and record.snapshot_id is None
    assert world.locks() == []


@pytest.mark.integration
@needs_restic
def test_a_daemon_worker_runs_an_enqueued_backup(world, capsys):
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)], policy=NO_FORGET)
    payload = json.dumps({"repo": "local", "service": "app"})
    code, out, err = world.svc(capsys, "jobs", "enqueue", BACKUP, "--payload", payload, "--json")
    assert code == 0, err
    job_id = json.loads(out)["id"]
    code, _out, err = world.svc(capsys, "worker", "--drain")
    assert code == 0, err
    [job] = world.jobs()
    assert job.id == job_id and job.state is JobState.SUCCEEDED
    assert job.result["snapshot_id"] == world.snapshots("app")[0]["short_id"]


# -- hostile-user review: timeouts, locks, forget, exit codes, odd files, hook output ---------


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fifo_snapshot(world: SvcWorld) -> Path:
    """A FIFO among the snapshots: a restic that lists them (forget) blocks opening it,
    holding the lock it took first."""
    return world.repo / "snapshots" / ("f" * 64)


@pytest.mark.integration
@needs_restic
def test_a_timed_out_restic_backup_leaves_no_lock(world, capsys):
    src = sparse_tree(world.root / "src")
    world.service("app", paths=[str(src)], policy=NO_FORGET, **world.logging_hooks())
    world.settings["restic_timeout"] = "2s"
    code, out, err = world.svc(capsys, "backup", "local", "app", "--json")
    assert code == 4, err
    [row] = json.loads(out)["services"]
    assert row["state"] == "failed" and "timed out after 2s (killed)" in row["error"]
    assert world.hooks_ran() == ["pre app local pre", "post app failed "]
    # 0.14 leaves its lock when killed; svc ran `restic unlock` after the kill.
    assert world.locks() == []
    assert "removed stale locks" in err


@pytest.mark.integration
@needs_restic
def test_a_failed_forget_makes_the_backup_partial_and_leaves_no_lock(world, capsys):
    src = tree(world.root / "src")
    fifo = fifo_snapshot(world)
    # The post hook runs between the backup and forget: from there, forget blocks (holding
    # its exclusive lock) until restic_timeout kills it.
    world.service("app", paths=[str(src)], post=f"mkfifo {fifo}")
    world.settings["restic_timeout"] = "5s"
    try:
        code, out, err = world.svc(capsys, "backup", "local", "app", "--json")
    finally:
        fifo.unlink(missing_ok=True)
    assert code == 0, err  # the snapshot was saved: partial, which exits 0 like unreadable files
    [row] = json.loads(out)["services"]
    assert row["state"] == "partial" and row["snapshot_id"]
    assert row["forget"]["ran"] is True and "timed out" in row["forget"]["error"]
    [warning] = row["warnings"]
    assert warning.startswith("forget failed, old snapshots were not removed: ")
    assert "timed out after 5s" in warning
    assert "warning: app: forget failed" in err
    [job] = world.jobs()
    assert job.state is JobState.SUCCEEDED and job.result["state"] == "partial"
    assert world.locks() == []  # the killed forget's exclusive lock was removed
    code, out, err = world.svc(capsys, "list", "--json")
    assert code == 0, err
    assert "partial" in out


@pytest.mark.integration
@needs_restic
def test_sigterm_during_forget_removes_its_exclusive_lock(world, capsys):
    src = tree(world.root / "src")
    fifo = fifo_snapshot(world)
    world.service("app", paths=[str(src)], post=f"mkfifo {fifo}")
    world.write()
    try:
        with subprocess.Popen(
            [SVC, "--config", str(world.config), "backup", "local", "app", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                deadline = time.monotonic() + 60
                # The backup's own lock is gone before the post hook makes the FIFO.
                while not (fifo.exists() and world.locks()):
                    assert proc.poll() is None, proc.communicate()
                    assert time.monotonic() < deadline, "forget never took its lock"
                    time.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
    finally:
        fifo.unlink(missing_ok=True)
    assert proc.returncode == 143, err
    [row] = json.loads(out)["services"]
    assert row["state"] == "partial" and row["snapshot_id"]
    assert "restic forget interrupted by SIGTERM" in row["forget"]["error"]
    assert world.locks() == []
    # The next backup is not refused "exclusively locked".
    del world.settings["services"]["app"]["backup"]["post"]
    code, _out, err = world.svc(capsys, "backup", "local", "app")
    assert code == 0, err


@pytest.mark.integration
@needs_restic
def test_a_local_repository_that_is_a_file_is_exit_1_without_an_ssh_hint(world, capsys):
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)], policy=NO_FORGET)
    world.settings["repositories"]["local"]["repository"] = str(world.password / "keys")
    code, _out, err = world.svc(capsys, "backup", "local", "app")
    assert code == 1, err
    assert "error: app: restic backup: cannot open the repository: " in err
    assert "a local repository: check that its path is a directory" in err
    assert "ssh" not in err and "reachable" not in err
    code, _out, err = world.svc(capsys, "list-backups", "local", "app")
    assert code == 1, err
    assert "ssh" not in err


@pytest.mark.integration
@needs_restic
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("backup", "local", "app"), id="backup"),
        pytest.param(("list-backups", "local", "app"), id="list-backups"),
        pytest.param(("check", "local"), id="check"),
        pytest.param(("restore", "local", "app", "latest"), id="restore"),
        pytest.param(("init", "local"), id="init"),
    ],
)
def test_a_rest_server_refusing_the_connection_is_exit_3(world, capsys, args):
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)], policy=NO_FORGET)
    location = f"rest:http://127.0.0.1:{closed_port()}/"
    world.settings["repositories"]["local"]["repository"] = location
    code, _out, err = world.svc(capsys, *args)
    assert code == 3, err
    assert "connection refused" in err and "reachable" in err


@pytest.mark.integration
@needs_restic
@pytest.mark.parametrize(
    ("kind", "setting"),
    [
        pytest.param("fifo", "password_file", id="password-fifo"),
        pytest.param("dir", "password_file", id="password-dir"),
        pytest.param("fifo", "repository_file", id="repository-file-fifo"),
    ],
)
def test_a_password_file_that_is_no_regular_file_is_a_config_error(world, capsys, kind, setting):
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)], policy=NO_FORGET, **world.logging_hooks())
    odd = world.root / "odd"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.mkdir()
    local = world.settings["repositories"]["local"]
    if setting == "repository_file":
        del local["repository"]
    local[setting] = str(odd)
    # Without the check restic would wait for a writer until restic_timeout.
    world.settings["restic_timeout"] = "10s"
    started = time.monotonic()
    code, out, err = world.svc(capsys, "backup", "local", "app")
    assert code == 2, err
    assert time.monotonic() - started < 8
    assert out == "" and err.count("\n") == 1
    assert f"repositories.local.{setting}: not a regular file" in err
    assert world.jobs() == [] and world.hooks_ran() == []
    for args in (("init", "local"), ("list-backups", "local", "app")):
        code, _out, err = world.svc(capsys, *args)
        assert code == 2 and f"repositories.local.{setting}: not a regular file" in err, args


@pytest.mark.integration
@needs_restic
def test_a_fifo_password_file_from_a_variable_names_the_variable(world, capsys, monkeypatch):
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)], policy=NO_FORGET)
    fifo = world.root / "pw.fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("SVC_REPOSITORIES_LOCAL_PASSWORD_FILE", str(fifo))
    for args in (("backup", "local", "app"), ("restore", "local", "app"), ("init", "local")):
        code, out, err = world.svc(capsys, *args)
        assert (code, out) == (2, ""), (args, err)
        expected = (
            "config error: SVC_REPOSITORIES_LOCAL_PASSWORD_FILE: "
            "repositories.local.password_file: not a regular file"
        )
        assert err.startswith(expected), (args, err)
    assert world.jobs() == []


@pytest.mark.integration
@needs_restic
def test_hook_output_keeps_only_a_bounded_tail(world, capsys):
    src = tree(world.root / "src")
    total = 3 * backup_flow.HOOK_OUTPUT_KEEP
    pre = f"head -c {total} /dev/zero | tr '\\0' x; echo END; echo oops >&2"
    world.service("app", paths=[str(src)], policy=NO_FORGET, pre=pre)
    code, out, err = world.svc(capsys, "backup", "local", "app", "--json")
    assert code == 0, err
    [row] = json.loads(out)["services"]
    dropped = total + len("END\n") - backup_flow.HOOK_OUTPUT_KEEP
    assert row["hooks"]["pre"]["stdout_dropped"] == dropped
    assert row["hooks"]["pre"]["stderr_dropped"] == 0
    assert f"the pre hook's stdout was cut to its last {backup_flow.HOOK_OUTPUT_KEEP}" in err
    [job] = world.jobs()
    kept = world.artifact(job, "hooks/pre.stdout.txt").read_bytes()
    note = f"[svc: output cut: the first {dropped} bytes were dropped, ".encode()
    assert kept.startswith(note)
    assert len(kept) < backup_flow.HOOK_OUTPUT_KEEP + 200
    assert kept.endswith(b"xxxEND\n")
    assert world.artifact(job, "hooks/pre.stderr.txt").read_text() == "oops\n"


@pytest.mark.integration
@needs_restic
def test_a_hung_hook_is_killed_at_hook_timeout_and_its_output_kept(world, capsys):
    src = tree(world.root / "src")
    world.service("app", paths=[str(src)], policy=NO_FORGET, pre="echo waiting for db; sleep 60")
    world.settings["hook_timeout"] = "1s"
    code, out, err = world.svc(capsys, "backup", "local", "app", "--json")
    assert code == 4, err
    [row] = json.loads(out)["services"]
    assert row["state"] == "failed" and "pre hook timed out after 1s (killed)" in row["error"]
    assert row["snapshot_id"] is None and world.snapshots() == []
    [job] = world.jobs()
    # Why it hung is still there to read.
    assert world.artifact(job, "hooks/pre.stdout.txt").read_text() == "waiting for db\n"
