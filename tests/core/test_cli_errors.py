"""Hostile command lines: every error is one ``error: ...`` line on stderr with the right exit.

These go through ``main()``, the console entry, so they cover the central error printing
that every command (the core's and each domain's) shares.
"""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from homeops.cli import main
from homeops.core import logging as hlog
from homeops.core.artifacts import DAY_S, ArtifactStore
from tests.core.test_cli import run_main

HOMEOPS = str(Path(sys.executable).with_name("homeops"))


def one_line(err):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def make_job(root, job_id="job1", rel="stdout.txt"):
    store = ArtifactStore(root)
    store.ensure_job(job_id, "t")
    asyncio.run(store.add_bytes(job_id, rel, b"out\n", type="ssh"))
    return store


# -- A: a sweep deletes only what it made --------------------------------------------------


def test_sweep_with_empty_root_deletes_nothing(capsys, state_dir, tmp_path, monkeypatch):
    cwd = tmp_path / "home"
    cwd.mkdir()
    for name in ("photos", "docs", "src"):
        (cwd / name).mkdir()
        old = os.stat(cwd / name).st_mtime - 30 * DAY_S
        os.utime(cwd / name, (old, old))
    monkeypatch.chdir(cwd)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"artifacts": {"root": ""}}))
    code, out, err = run_main(capsys, "--config", str(cfg), "artifacts", "sweep")
    assert code == 2
    assert out == ""
    assert one_line(err) == (
        f"config error: {cfg}: artifacts.root: "
        "empty path (leave the setting out to use the default)"
    )
    # Even a root that really is this directory only loses job dirs with a manifest.
    monkeypatch.setenv("HOMEOPS_ARTIFACTS_ROOT", str(cwd))
    make_job(cwd, "oldjob")
    code, out, err = run_main(capsys, "artifacts", "sweep", "--retention-days", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["removed"] == ["oldjob"]
    assert sorted(p.name for p in cwd.iterdir()) == ["docs", "photos", "src"]


# -- B: filesystem trouble is one line, not a traceback ------------------------------------


@pytest.mark.parametrize("out_dir", ["/proc", "/sys/kernel"])
def test_fetch_into_unwritable_dir(capsys, state_dir, out_dir):
    make_job(state_dir / "artifacts")
    code, out, err = run_main(capsys, "artifacts", "fetch", "--job", "job1", "--out", out_dir)
    assert code == 1
    assert out == ""
    assert one_line(err).startswith(f"error: {out_dir}: cannot write: ")


@pytest.mark.parametrize("kind", ["file", "symlink-loop"])
def test_artifacts_when_root_is_not_a_readable_dir(capsys, state_dir, tmp_path, monkeypatch, kind):
    root = tmp_path / "root"
    if kind == "file":
        root.write_text("x")
    else:
        root.symlink_to(root)  # ELOOP: unreadable for every user, root included
    monkeypatch.setenv("HOMEOPS_ARTIFACTS_ROOT", str(root))
    for args in (
        ("artifacts", "list"),
        ("artifacts", "list", "--job", "job1"),
        ("artifacts", "fetch", "--job", "job1", "--out", str(tmp_path / "o")),
        ("artifacts", "sweep"),
    ):
        code, _, err = run_main(capsys, *args)
        assert code == 1, args
        assert one_line(err).startswith(f"error: {root}"), args


# -- F: empty values never mean the current directory --------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--config=", "config", "show"], "error: --config: empty path", id="config-eq"
        ),
        pytest.param(
            ["config", "show", "--config", ""], "error: --config: empty path", id="config"
        ),
        pytest.param(
            ["artifacts", "fetch", "--job", "job1", "--out", ""],
            "error: --out: empty path",
            id="out",
        ),
        pytest.param(
            ["artifacts", "fetch", "--job", "job1", "--out="],
            "error: --out: empty path",
            id="out-eq",
        ),
    ],
)
def test_empty_path_arguments_refused(capsys, state_dir, tmp_path, monkeypatch, args, message):
    make_job(state_dir / "artifacts")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, *args)
    assert code == 2
    assert out == ""
    assert one_line(err) == message
    assert not (tmp_path / "stdout.txt").exists()


def test_empty_state_dir_in_file_refused(capsys, state_dir, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"state_dir": ""}')
    code, _, err = run_main(capsys, "--config", str(cfg), "doctor")
    assert code == 2
    assert one_line(err).startswith(f"config error: {cfg}: state_dir: empty path")


# -- G: usage errors are one line, everywhere ----------------------------------------------


@pytest.mark.parametrize(
    ("args", "start"),
    [
        pytest.param(
            ["jobs", "enqueue", "a.b", "--max-attempts", "0"],
            "error: Invalid value for '--max-attempts': ",
            id="max-attempts",
        ),
        pytest.param(
            ["jobs", "worker", "--slots", "0"], "error: Invalid value for '--slots': ", id="slots"
        ),
        pytest.param(
            ["config", "show", "--config"], "error: --config: missing value", id="no-value"
        ),
        pytest.param(
            ["--config", "doctor"],
            "error: --config: missing value before 'doctor' (for a file named doctor: "
            "--config ./doctor)",
            id="command-as-value",
        ),
        pytest.param(
            ["doctor", "--config", "--debug"], "error: --config: missing value", id="flag-as-value"
        ),
        pytest.param(["jobs", "list", "--bogus"], "error: No such option: --bogus", id="option"),
        pytest.param(["bogus"], "error: No such command 'bogus'", id="command"),
        pytest.param(
            ["artifacts", "sweep", "--retention-days", "soon"],
            "error: Invalid value for '--retention-days'",
            id="type",
        ),
    ],
)
def test_usage_errors_are_one_line(capsys, state_dir, args, start):
    code, out, err = run_main(capsys, *args)
    assert code == 2
    assert out == ""
    assert one_line(err).startswith(start)


def test_file_named_like_a_command_is_still_usable(capsys, state_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("doctor").write_text('{"jobs": {"slots": 3}}')
    for flag in (["--config", "./doctor"], ["--config=doctor"]):
        code, out, _ = run_main(capsys, *flag, "config", "show", "--json")
        assert code == 0
        assert json.loads(out)["settings"]["jobs.slots"]["value"] == 3


def test_console_script_usage_error(state_dir):
    out = subprocess.run(
        [HOMEOPS, "jobs", "worker", "--slots", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert one_line(out.stderr).startswith("error: Invalid value for '--slots'")


def test_group_without_command_still_shows_help(capsys, state_dir):
    # Asking a group what it has is not an error: help on stdout, exit 0, as with --help.
    code, out, err = run_main(capsys, "jobs")
    assert code == 0
    assert err == ""
    assert "Commands:" in out
    code, out, _ = run_main(capsys)
    assert code == 0
    assert "Commands:" in out


def test_table_cells_cannot_break_lines_or_send_escapes():
    from homeops.core.cli.common import table

    text = table(["id", "error"], [["j1", "boom\nsecond line \x1b[31mred"], ["j2", "café"]])
    lines = text.splitlines()
    assert len(lines) == 3
    assert "\x1b" not in text
    assert "boom\\nsecond line \\x1b[31mred" in lines[1]
    assert lines[2].endswith("café")


@pytest.mark.parametrize("args", [["version"], ["version", "--json"], ["jobs", "list"]])
def test_closed_or_full_stdout_is_one_line(state_dir, args):
    env = {**os.environ, "HOMEOPS_STATE_DIR": str(state_dir)}
    closed = subprocess.run(  # the shell starts homeops with fd 1 closed (`>&-`)
        ["sh", "-c", 'exec "$0" "$@" >&-', HOMEOPS, *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        timeout=60,
    )
    assert closed.returncode == 1
    assert closed.stderr.strip().splitlines()[-1] == "error: cannot write output: stdout is closed"
    assert "Traceback" not in closed.stderr
    with open("/dev/full", "w") as full:
        res = subprocess.run(
            [HOMEOPS, *args],
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=60,
        )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: cannot write output to stdout: No space left on device"
    )


# -- H: long and non-ASCII input is truncated and escaped -----------------------------------


def test_huge_non_ascii_argument_is_escaped_and_truncated(capsys, state_dir):
    from homeops.core.cli.common import MAX_ERROR_CHARS

    bad = "é" * 2500 + "\x1b[31m" + "x" * 2500
    code, _, err = run_main(capsys, "jobs", "status", bad)
    assert code == 2
    line = one_line(err)
    assert line.isascii()
    assert "\x1b" not in line
    assert len(line) <= MAX_ERROR_CHARS + 60
    assert line.startswith("error: invalid job id '\\xe9\\xe9")
    assert "characters elided" in line
    # The reason at the end survives the cut.
    assert line.endswith("without '..'")


def test_error_line_masks_before_escaping_and_truncating():
    from homeops.core.cli.common import error_line

    secret = 'tök"en-' + "s" * 30
    hlog.register_secret(secret)
    try:
        message = "x" * 250 + secret + "y" * 500
        line = error_line(message)
        assert "***" in line
        assert "s" * 10 not in line
        assert "\\xf6" not in line
    finally:
        hlog.clear_secrets()


@pytest.mark.parametrize(
    ("message", "want"),
    [
        pytest.param("plain", "plain", id="plain"),
        pytest.param("a\nb\tc\r", "a\\nb\\tc\\r", id="controls"),
        pytest.param("naïve ✓ 🙂", "na\\xefve \\u2713 \\U0001f642", id="non-ascii"),
    ],
)
def test_error_line_escapes(message, want):
    from homeops.core.cli.common import error_line

    assert error_line(message) == want


def test_error_line_cuts_only_between_escapes():
    from homeops.core.cli.common import error_line

    line = error_line("é" * 1000)
    head, rest = line.split("... (", 1)
    count, tail = rest.split(" characters elided) ...")
    assert head == "\\xe9" * (len(head) // 4)
    assert tail == "\\xe9" * (len(tail) // 4)
    assert int(count) + len(head) // 4 + len(tail) // 4 == 1000


# -- I: an unknown failpoint is a config error for every command ----------------------------


@pytest.mark.parametrize(
    "args", [["config", "show"], ["doctor", "--only", "core"], ["supervise", "--once"]]
)
def test_unknown_failpoint_in_environment_refused_at_load(capsys, state_dir, monkeypatch, args):
    monkeypatch.setenv("HOMEOPS_SUPERVISOR_FAILPOINT", "nope")
    code, out, err = run_main(capsys, *args)
    assert code == 2
    assert out == ""
    line = one_line(err)
    assert line.startswith(
        "config error: HOMEOPS_SUPERVISOR_FAILPOINT: supervisor.failpoint: unknown check 'nope' "
        "(known: "
    )
    assert "state_dir" in line
    assert "tool.git" in line


def test_known_failpoint_in_file_accepted(capsys, state_dir, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"supervisor": {"failpoint": "tool.git"}}')
    code, out, _ = run_main(capsys, "--config", str(cfg), "config", "show", "--json")
    assert code == 0
    assert json.loads(out)["settings"]["supervisor.failpoint"]["value"] == "tool.git"
    cfg.write_text('{"supervisor": {"failpoint": "tool.gti"}}')
    code, _, err = run_main(capsys, "--config", str(cfg), "config", "show")
    assert code == 2
    assert one_line(err).startswith(f"config error: {cfg}: supervisor.failpoint: unknown check")


# -- the backstop: an OSError nobody translated ---------------------------------------------


def test_untranslated_os_error_is_one_line_unless_debugging(capsys, state_dir, monkeypatch):
    from homeops.core.artifacts import ArtifactStore

    def refuse(self):
        raise PermissionError(13, "Permission denied", "/srv/somewhere")

    monkeypatch.setattr(ArtifactStore, "list_jobs", refuse)
    code, out, err = run_main(capsys, "artifacts", "list")
    assert code == 1
    assert out == ""
    assert one_line(err) == "error: /srv/somewhere: Permission denied"
    # --debug keeps the traceback for whoever fixes the layer that should have translated it.
    with pytest.raises(PermissionError):
        main(["artifacts", "list", "--debug"])


def test_sigterm_during_doctor_kills_its_probes(state_dir, tmp_path):
    # SIGTERM used to end doctor at once and leave a hung probe (`git --version`) under init.
    import signal
    import time

    marker = f"homeops-hung-git-{os.getpid()}"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "git"
    fake.write_text(f"#!/bin/sh\n# {marker}\nsleep 30\n")
    fake.chmod(0o755)
    env = {
        **os.environ,
        "HOMEOPS_STATE_DIR": str(state_dir),
        "HOMEOPS_HEALTH_CHECK_TIMEOUT": "25s",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }

    def probes() -> list[str]:
        out = subprocess.run(
            ["pgrep", "-f", str(fake)], capture_output=True, text=True, check=False, timeout=10
        )
        return out.stdout.split()

    proc = subprocess.Popen(
        [HOMEOPS, "doctor"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(200):  # up to 20 s for the probe to start
            if probes():
                break
            time.sleep(0.1)
        assert probes(), "the fake git probe never started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for _ in range(50):  # the kill is synchronous; allow a moment for the reaping
        if not probes():
            break
        time.sleep(0.1)
    left = probes()
    for pid in left:
        os.kill(int(pid), signal.SIGKILL)
    assert left == [], "doctor left its probe running after SIGTERM"
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == "terminated"
