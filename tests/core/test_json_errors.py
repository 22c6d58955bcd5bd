"""``--json`` on failure: every core command prints one JSON object saying why it failed.

The object is ``{"ok": false, ..., "error": <the stderr line's text>, "exit_code": N}``;
the error line on stderr and the exit code stay as they were. Each command runs as
``homeops …``, as ``homeops win …`` and as the seed tool ``win-automation …`` (the same
core commands, mounted three ways).
"""

import json

import pytest

from homeops.cli import run_console
from homeops.core.cli.common import json_errors
from homeops.core.errors import OperationalError, UsageError
from tests.core.test_cli import run_main

UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


def run_seed(capsys, *args):
    """``win-automation ARGS`` in this process, as its console script runs it."""
    code = run_console("win-automation", list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_as(form, capsys, *args):
    match form:
        case "homeops":
            return run_main(capsys, *args)
        case "win":
            return run_main(capsys, "win", *args)
        case "win-automation":
            return run_seed(capsys, *args)
    raise AssertionError(form)


def error_line(err):
    """The text of the console's error line (the last stderr line; logs may come first)."""
    lines = err.strip().splitlines()
    assert lines, "no error line on stderr"
    assert "Traceback" not in err
    line = lines[-1]
    if line.startswith("config error: "):
        return line  # a ConfigError's own message starts so; the console adds no prefix
    assert line.startswith("error: "), err
    return line.removeprefix("error: ")


def assert_failure_object(code, out, err):
    assert code != 0
    data = json.loads(out)  # one document: json.loads refuses anything after it
    assert isinstance(data, dict), out
    assert data["ok"] is False
    assert data["error"] == error_line(err)
    assert data["exit_code"] == code
    return data


FORMS = ["homeops", "win", "win-automation"]
BAD_LOG_LEVEL = {"HOMEOPS_LOG_LEVEL": "loud"}


def _case(args, code, env=None, *, forms=FORMS, name):
    return [pytest.param(form, args, code, env or {}, id=f"{name}-{form}") for form in forms]


CASES = [
    *_case(["jobs", "status", "--id", UNKNOWN_ID, "--json"], 2, name="jobs-status-unknown"),
    *_case(["jobs", "status", "nope", "--json"], 2, name="jobs-status-bad-id"),
    *_case(["jobs", "status", "--json"], 2, name="jobs-status-no-id"),
    *_case(["jobs", "cancel", "--id", UNKNOWN_ID, "--json"], 2, name="jobs-cancel-unknown"),
    *_case(["jobs", "list", "--state", "done", "--json"], 2, name="jobs-list-bad-state"),
    *_case(["jobs", "list", "--json"], 2, BAD_LOG_LEVEL, name="jobs-list-config"),
    *_case(
        ["jobs", "enqueue", "nope.verb", "--json"], 2, forms=["homeops"], name="jobs-enqueue-type"
    ),
    *_case(
        ["jobs", "enqueue", "core.artifacts-sweep", "--payload", "[1]", "--json"],
        2,
        forms=["homeops"],
        name="jobs-enqueue-payload",
    ),
    *_case(
        ["jobs", "enqueue", "--type", "windows.exec", "--cmd", "a\nb", "--json"],
        2,
        forms=["win", "win-automation"],
        name="jobs-enqueue-multiline",
    ),
    *_case(["jobs", "check", "--json"], 2, BAD_LOG_LEVEL, name="jobs-check-config"),
    *_case(["jobs", "prune", "--older-than", "soon", "--json"], 2, name="jobs-prune-duration"),
    *_case(["artifacts", "list", "--job", UNKNOWN_ID, "--json"], 2, name="artifacts-list-unknown"),
    *_case(["artifacts", "list", "--json"], 2, BAD_LOG_LEVEL, name="artifacts-list-config"),
    *_case(
        ["artifacts", "fetch", "--job", UNKNOWN_ID, "--out", "", "--json"],
        2,
        name="artifacts-fetch-empty-out",
    ),
    *_case(
        ["artifacts", "fetch", "--job", UNKNOWN_ID, "--out", "out", "--json"],
        2,
        name="artifacts-fetch-unknown",
    ),
    *_case(["artifacts", "sweep", "--json"], 2, BAD_LOG_LEVEL, name="artifacts-sweep-config"),
    *_case(["artifacts", "gc", "--json"], 2, BAD_LOG_LEVEL, name="artifacts-gc-config"),
    *_case(["config", "show", "--json"], 2, BAD_LOG_LEVEL, name="config-show"),
    *_case(["doctor", "--json"], 2, BAD_LOG_LEVEL, name="doctor-config"),
    *_case(["doctor", "--only", "nope", "--json"], 2, forms=["homeops"], name="doctor-only"),
    *_case(
        ["supervise", "--once", "--interval", "0", "--json"],
        2,
        forms=["homeops"],
        name="supervise-interval",
    ),
    *_case(
        ["supervise", "--once", "--failpoint", "nope", "--only", "core", "--json"],
        2,
        forms=["homeops"],
        name="supervise-failpoint",
    ),
    *_case(
        ["supervisor", "run", "--once", "--interval", "0", "--json"],
        2,
        forms=["win", "win-automation"],
        name="supervisor-run-interval",
    ),
    *_case(
        ["supervisor", "run", "--once", "--json"],
        2,
        BAD_LOG_LEVEL,
        forms=["win", "win-automation"],
        name="supervisor-run-config",
    ),
]


@pytest.mark.parametrize(("form", "args", "code", "env"), CASES)
def test_failing_json_command_prints_one_failure_object(
    capsys, state_dir, tmp_path, monkeypatch, form, args, code, env
):
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    got, out, err = run_as(form, capsys, *args)
    assert got == code, err
    assert_failure_object(got, out, err)
    # Without --json the same failure prints nothing on stdout, and the same error line.
    plain, plain_out, plain_err = run_as(form, capsys, *[a for a in args if a != "--json"])
    assert (plain, plain_out) == (code, "")
    assert error_line(plain_err) == error_line(err)


def test_failure_object_names_what_the_command_knew(capsys, state_dir):
    code, out, err = run_seed(capsys, "jobs", "status", "--id", "nope", "--json")
    assert code == 2
    assert json.loads(out) == {
        "ok": False,
        "id": "nope",
        "error": error_line(err),
        "exit_code": 2,
    }
    code, out, err = run_main(capsys, "jobs", "enqueue", "nope.verb", "--json")
    assert json.loads(out)["type"] == "nope.verb"


def test_artifacts_fetch_operational_failure_is_exit_1(capsys, state_dir, tmp_path):
    (state_dir / "artifacts" / UNKNOWN_ID).mkdir(parents=True)  # a job dir with no manifest
    code, out, err = run_main(
        capsys, "artifacts", "fetch", "--job", UNKNOWN_ID, "--out", str(tmp_path / "o"), "--json"
    )
    assert code == 1
    assert assert_failure_object(code, out, err)["job"] == UNKNOWN_ID


# -- a report printed on failure stays the one document --------------------------------------


@pytest.fixture
def damaged_store(state_dir):
    (state_dir / "jobs.sqlite3").write_bytes(b"this is not a database\n" * 512)
    return state_dir


def test_doctor_failing_check_prints_its_report_only(capsys, damaged_store):
    code, out, err = run_main(capsys, "doctor", "--only", "core", "--json")
    assert code == 3, err
    report = json.loads(out)
    assert set(report) == {"ok", "exit_code", "checks"}
    assert report["ok"] is False
    assert report["exit_code"] == 3
    assert "job_store" in {c["name"] for c in report["checks"] if c["status"] == "fail"}


def test_jobs_check_damaged_store_prints_its_report_only(capsys, damaged_store):
    code, out, err = run_main(capsys, "jobs", "check", "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["ok"] is False
    assert "error" not in report
    assert report["problems"]


def test_supervise_once_failing_pass_prints_one_line(capsys, damaged_store):
    code, out, err = run_main(capsys, "supervise", "--once", "--only", "core", "--json")
    assert code == 3, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    report = json.loads(lines[0])
    assert report["ok"] is False
    assert "error" not in report


def test_supervise_failure_object_is_one_line(capsys, state_dir):
    code, out, err = run_main(capsys, "supervise", "--once", "--interval", "0", "--json")
    assert code == 2
    assert out.count("\n") == 1
    assert_failure_object(code, out, err)


# -- json_errors itself ----------------------------------------------------------------------


def test_json_errors_prints_nothing_without_json(capsys):
    with pytest.raises(UsageError), json_errors(False):
        raise UsageError("bad flag")
    assert capsys.readouterr().out == ""


def test_json_errors_after_a_printed_document_adds_none(capsys):
    from homeops.core.cli.common import print_json

    with pytest.raises(OperationalError), json_errors(True) as known:
        known["host"] = "vm"
        print_json({"ok": False, "report": 1})
        raise OperationalError("after the report")
    assert json.loads(capsys.readouterr().out) == {"ok": False, "report": 1}


def test_json_errors_nested_print_once(capsys):
    with pytest.raises(UsageError), json_errors(True), json_errors(True) as inner:
        inner["where"] = "inner"
        raise UsageError("once")
    assert json.loads(capsys.readouterr().out) == {
        "ok": False,
        "where": "inner",
        "error": "once",
        "exit_code": 2,
    }


def test_json_errors_keeps_ok_false_and_masks_like_the_error_line(capsys):
    with pytest.raises(OperationalError), json_errors(True) as known:
        known.update(ok=True, error="stale", exit_code=0)
        raise OperationalError("line one\nline two")
    data = json.loads(capsys.readouterr().out)
    assert data == {"ok": False, "error": "line one\\nline two", "exit_code": 1}


def test_json_errors_reports_an_untranslated_os_error_as_the_console_does(capsys):
    from homeops.core.cli.common import os_error_message

    exc = PermissionError(13, "Permission denied", "/srv/out")
    with pytest.raises(PermissionError), json_errors(True):
        raise exc
    data = json.loads(capsys.readouterr().out)
    assert data == {"ok": False, "error": "/srv/out: Permission denied", "exit_code": 1}
    assert os_error_message(exc) == data["error"]  # what run_app prints after "error: "


def test_json_errors_ignores_a_reader_that_left(capsys):
    with pytest.raises(BrokenPipeError), json_errors(True):
        raise BrokenPipeError(32, "Broken pipe")
    assert capsys.readouterr().out == ""


def test_windows_module_reexports_the_core_json_errors():
    from homeops.windows.cli import common as windows_common

    assert windows_common.json_errors is json_errors


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("jobs", "list", "--bogus", "--json"), id="unknown-option"),
        pytest.param(("jobs", "status", "--json", "--id"), id="missing-value"),
    ],
)
def test_a_refused_command_line_with_json_prints_the_object_too(capsys, state_dir, args):
    code, out, err = run_main(capsys, *args)
    assert code == 2
    failure = json.loads(out)
    assert failure["ok"] is False and failure["exit_code"] == 2
    assert err.strip() == f"error: {failure['error']}"


def test_json_after_the_double_dash_is_not_ours(capsys, state_dir):
    code, out, _ = run_main(capsys, "jobs", "list", "--bogus", "--", "--json")
    assert (code, out) == (2, "")
