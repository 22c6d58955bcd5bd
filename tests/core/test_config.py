import json
import os
import re
from pathlib import Path

import pytest
from pydantic import Field, SecretStr

from homeops.core import logging as hlog
from homeops.core.config import (
    DirLocation,
    Duration,
    ExistingFile,
    FileLocation,
    Hostname,
    HostPort,
    HttpUrlStr,
    LoginName,
    Port,
    PositiveDuration,
    Section,
    SettingsSpec,
    env_names,
    flatten,
    load_settings,
)
from homeops.core.durations import format_duration, parse_duration
from homeops.core.errors import ConfigError, ExitCode, quote_input
from homeops.core.settings import CORE_SPEC, default_state_dir


class Ssh(Section):
    host: str = Field(default="localhost", description="host")
    port: Port = Field(default=22555, description="port")
    connect_timeout: PositiveDuration = Field(default=10.0, description="t")


class Playwright(Section):
    host: str = Field(default="127.0.0.1", description="h")
    ws_path: SecretStr | None = Field(default=None, description="secret ws path")


class Artifacts(Section):
    out_dir: Path = Field(
        default=Path("artifacts"), description="o", json_schema_extra=env_names("DEMO_ARTIFACT_OUT")
    )
    retention: Duration = Field(default=7 * 86400.0, description="r")


class Demo(Section):
    ssh: Ssh = Field(default_factory=Ssh)
    playwright: Playwright = Field(default_factory=Playwright)
    artifacts: Artifacts = Field(default_factory=Artifacts)
    tags: list[str] = Field(default_factory=list, description="tags")


SPEC = SettingsSpec(Demo, "DEMO", "DEMO_CONFIG")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.json"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_only():
    loaded = load_settings(SPEC, environ={})
    assert loaded.settings.ssh.port == 22555
    assert set(loaded.sources.values()) == {"default"}


def test_layers_file_then_env(tmp_path):
    path = write(
        tmp_path, json.dumps({"ssh": {"host": "vm", "port": 2222, "connect_timeout": "30s"}})
    )
    loaded = load_settings(SPEC, environ={"DEMO_SSH_PORT": "2200"}, config_path=path)
    s = loaded.settings
    assert (s.ssh.host, s.ssh.port, s.ssh.connect_timeout) == ("vm", 2200, 30.0)
    assert loaded.sources["ssh.host"] == f"file:{path}"
    assert loaded.sources["ssh.port"] == "env:DEMO_SSH_PORT"
    assert loaded.sources["playwright.host"] == "default"


def test_config_env_var_names_the_file(tmp_path):
    path = write(tmp_path, '{"ssh": {"host": "from-env-file"}}')
    loaded = load_settings(SPEC, environ={"DEMO_CONFIG": str(path)})
    assert loaded.settings.ssh.host == "from-env-file"
    assert loaded.config_path == path


def test_explicit_path_beats_config_env(tmp_path):
    a = write(tmp_path, '{"ssh": {"host": "a"}}')
    b = tmp_path / "b.json"
    b.write_text('{"ssh": {"host": "b"}}')
    loaded = load_settings(SPEC, environ={"DEMO_CONFIG": str(b)}, config_path=a)
    assert loaded.settings.ssh.host == "a"


def test_env_alias_from_seed():
    loaded = load_settings(SPEC, environ={"DEMO_ARTIFACT_OUT": "/srv/a"})
    assert loaded.settings.artifacts.out_dir == Path("/srv/a")
    assert loaded.sources["artifacts.out_dir"] == "env:DEMO_ARTIFACT_OUT"


def test_structured_env_is_json():
    loaded = load_settings(SPEC, environ={"DEMO_TAGS": '["a", "b"]'})
    assert loaded.settings.tags == ["a", "b"]
    with pytest.raises(ConfigError, match=r"^config error: DEMO_TAGS: tags: expected JSON"):
        load_settings(SPEC, environ={"DEMO_TAGS": "a,b"})


def test_secret_from_env_file_is_masked(tmp_path, log_stream):
    secret_file = tmp_path / "ws"
    secret_file.write_text("sup3r-s3cret-path\n")
    loaded = load_settings(SPEC, environ={"DEMO_PLAYWRIGHT_WS_PATH_FILE": str(secret_file)})
    assert loaded.settings.playwright.ws_path is not None
    assert loaded.settings.playwright.ws_path.get_secret_value() == "sup3r-s3cret-path"
    assert loaded.sources["playwright.ws_path"] == "env:DEMO_PLAYWRIGHT_WS_PATH_FILE"
    rows = {k: v for k, v, _ in flatten(loaded)}
    assert rows["playwright.ws_path"] == "***"
    hlog.get_logger("t").info("op", "url ws://h:1/sup3r-s3cret-path")
    assert "sup3r" not in log_stream.getvalue()


def test_secret_file_key_in_json(tmp_path):
    secret_file = tmp_path / "ws"
    secret_file.write_text("from-json-file")
    path = write(tmp_path, json.dumps({"playwright": {"ws_path_file": str(secret_file)}}))
    loaded = load_settings(SPEC, environ={}, config_path=path)
    assert loaded.settings.playwright.ws_path is not None
    assert loaded.settings.playwright.ws_path.get_secret_value() == "from-json-file"


def test_unset_secret_shows_null():
    rows = {k: v for k, v, _ in flatten(load_settings(SPEC, environ={}))}
    assert rows["playwright.ws_path"] is None


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        pytest.param(
            '{"ssh": {"port": 2222,}}',
            {},
            r"^config error: {path}: invalid JSON at line 1 column 23: ",
            id="malformed-json-line-col",
        ),
        pytest.param(
            '{\n  "ssh": {\n    "port": "x"\n  }\n}',
            {},
            r'^config error: {path}: ssh\.port: Input should be a valid integer \(got "x"\)$',
            id="wrong-type",
        ),
        pytest.param(
            '{"ssh": {"port": 70000}}',
            {},
            r"^config error: {path}: ssh\.port: Input should be less than or equal to 65535",
            id="port-out-of-range",
        ),
        pytest.param(
            '{"ssh": {"connect_timeout": "soon"}}',
            {},
            r"^config error: {path}: ssh\.connect_timeout: invalid duration 'soon'",
            id="bad-duration",
        ),
        pytest.param(
            '{"ssh": {"connect_timeout": "0s"}}',
            {},
            r"^config error: {path}: ssh\.connect_timeout: Input should be greater than 0",
            id="zero-duration",
        ),
        pytest.param(
            '{"ssh": {"hots": "x"}}',
            {},
            r'^config error: {path}: ssh\.hots: unknown key \(did you mean "host"\?\)$',
            id="unknown-key-suggestion",
        ),
        pytest.param(
            '{"sshh": {}}',
            {},
            r'^config error: {path}: sshh: unknown key \(did you mean "ssh"\?\)$',
            id="unknown-section",
        ),
        pytest.param(
            '{"ssh": 5}',
            {},
            r"^config error: {path}: ssh: expected an object \(section\), got number$",
            id="section-not-object",
        ),
        pytest.param(
            "[1, 2]",
            {},
            r"^config error: {path}: top level must be a JSON object, not array$",
            id="top-level-list",
        ),
        pytest.param(
            "{}",
            {"DEMO_SSH_PORT": "0"},
            r"^config error: DEMO_SSH_PORT: ssh\.port: Input should be greater than or equal to 1",
            id="env-value-names-variable",
        ),
        pytest.param(
            '{"playwright": {"ws_path_file": "/nonexistent/ws"}}',
            {},
            r"^config error: {path}: playwright\.ws_path_file: cannot read secret file",
            id="missing-secret-file",
        ),
    ],
)
def test_config_errors(tmp_path, text, environ, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(SPEC, environ=environ, config_path=path)
    assert info.value.exit_code == ExitCode.USAGE
    message = str(info.value)
    assert "\n" not in message
    assert re.match(expected.replace("{path}", re.escape(str(path))), message), message


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"cannot read: No such file or directory"):
        load_settings(SPEC, environ={}, config_path=missing)


def test_env_secret_file_unreadable():
    with pytest.raises(ConfigError, match=r"^config error: DEMO_PLAYWRIGHT_WS_PATH_FILE: "):
        load_settings(SPEC, environ={"DEMO_PLAYWRIGHT_WS_PATH_FILE": "/nonexistent"})


def test_stray_env_var_warns(log_stream):
    loaded = load_settings(SPEC, environ={"DEMO_SSH_HOTS": "x"})
    assert loaded.warnings == (
        "environment variable DEMO_SSH_HOTS matches no setting (did you mean DEMO_SSH_HOST?)",
    )
    assert "DEMO_SSH_HOTS" in log_stream.getvalue()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("500ms", 0.5, id="ms"),
        pytest.param("30s", 30, id="s"),
        pytest.param("10m", 600, id="m"),
        pytest.param("1h30m", 5400, id="compound"),
        pytest.param("2d", 172800, id="d"),
        pytest.param("45", 45, id="bare-number"),
        pytest.param(" 1.5s ", 1.5, id="fraction-trimmed"),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    "text", ["", "s", "10x", "1h 30m", "-5s", "ten", "nan", "inf", "1e400", "-5"]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("environ", "want"),
    [
        pytest.param({"HOMEOPS_STATE_DIR": "/srv/st", "HOME": "/h"}, "/srv/st", id="explicit"),
        pytest.param({"XDG_STATE_HOME": "/x", "HOME": "/h"}, "/x/homeops", id="xdg"),
        pytest.param(
            {"XDG_STATE_HOME": "rel", "HOME": "/h"},
            "/h/.local/state/homeops",
            id="xdg-relative-ignored",
        ),
        pytest.param({"HOME": "/h"}, "/h/.local/state/homeops", id="home"),
    ],
)
def test_state_dir_resolution(environ, want):
    assert default_state_dir(environ) == Path(want)
    assert load_settings(CORE_SPEC, environ=environ).settings.state_dir == Path(want)


def test_core_derived_paths(tmp_path):
    loaded = load_settings(CORE_SPEC, environ={"HOMEOPS_STATE_DIR": str(tmp_path)})
    assert loaded.settings.jobs_db == tmp_path / "jobs.sqlite3"
    assert loaded.settings.artifacts_root == tmp_path / "artifacts"
    assert loaded.sources["state_dir"] == "env:HOMEOPS_STATE_DIR"


class Vault(Section):
    token: SecretStr | None = Field(default=None, min_length=20, description="token")
    ratio: float = Field(default=1.0, description="a float")


VAULT = SettingsSpec(Vault, "VLT", "VLT_CONFIG")


def test_wrong_secret_value_is_never_echoed(tmp_path):
    secret_file = tmp_path / "tok"
    secret_file.write_text("short-secret\n")
    for environ in ({"VLT_TOKEN_FILE": str(secret_file)}, {"VLT_TOKEN": "short-secret"}):
        with pytest.raises(ConfigError) as info:
            load_settings(VAULT, environ=environ)
        assert "short-secret" not in str(info.value)
        assert "token: " in str(info.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param('{"ssh": {"host": "a", "host": "b"}}', "duplicate key 'host'", id="duplicate"),
        pytest.param('{"ssh": {"port": NaN}}', "NaN is not valid JSON", id="nan-literal"),
        pytest.param('{"ssh": {"port": Infinity}}', "Infinity is not valid JSON", id="inf-literal"),
        pytest.param("[" * 100000, "nested too deeply", id="deep"),
        pytest.param('{"ssh": {"port": ' + "9" * 5000 + "}}", "invalid JSON: ", id="huge-int"),
    ],
)
def test_hostile_json(tmp_path, text, reason):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(SPEC, environ={}, config_path=path)
    assert reason in str(info.value)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        pytest.param("/dev/zero", "not a regular file", id="device"),
        pytest.param("/", "not a regular file", id="directory"),
    ],
)
def test_special_config_files_refused(path, reason):
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ConfigError, match=reason):
        load_settings(SPEC, environ={}, config_path=Path(path))
    assert len(os.listdir("/proc/self/fd")) == before, "file descriptor leaked"


def test_value_and_file_for_one_secret_refused(tmp_path):
    secret = tmp_path / "ws"
    secret.write_text("x" * 8)
    path = write(
        tmp_path, json.dumps({"playwright": {"ws_path": "abc", "ws_path_file": str(secret)}})
    )
    with pytest.raises(ConfigError, match="give either 'ws_path' or 'ws_path_file', not both"):
        load_settings(SPEC, environ={}, config_path=path)


def test_fifo_config_refused_without_waiting(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_settings(SPEC, environ={}, config_path=fifo)
    with pytest.raises(ConfigError, match=r"DEMO_PLAYWRIGHT_WS_PATH_FILE: .*not a regular file"):
        load_settings(SPEC, environ={"DEMO_PLAYWRIGHT_WS_PATH_FILE": str(fifo)})


def test_oversized_config_refused(tmp_path):
    path = write(tmp_path, '{"tags": [' + ", ".join(['"x"'] * 400000) + "]}")
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        load_settings(SPEC, environ={}, config_path=path)


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "-5", "Infinity"])
def test_non_finite_durations_refused(value):
    with pytest.raises(ConfigError, match=r"ssh\.connect_timeout: invalid duration"):
        load_settings(SPEC, environ={"DEMO_SSH_CONNECT_TIMEOUT": value})


@pytest.mark.parametrize("value", ["nan", "inf", "1e400"])
def test_non_finite_floats_refused(value):
    with pytest.raises(ConfigError, match=r"^config error: VLT_RATIO: ratio: "):
        load_settings(VAULT, environ={"VLT_RATIO": value})


def test_empty_env_value_counts_as_unset(tmp_path):
    environ = {"HOMEOPS_STATE_DIR": "", "HOME": str(tmp_path)}
    loaded = load_settings(CORE_SPEC, environ=environ)
    assert loaded.settings.state_dir == tmp_path / ".local" / "state" / "homeops"
    assert loaded.sources["state_dir"] == "default"


# -- file values are strict, environment strings are parsed --------------------------------


@pytest.mark.parametrize(
    ("data", "field", "shown"),
    [
        pytest.param({"jobs": {"slots": True}}, "jobs.slots", "true", id="bool-as-int"),
        pytest.param({"jobs": {"slots": "5"}}, "jobs.slots", '"5"', id="string-as-int"),
        pytest.param({"jobs": {"slots": 5.0}}, "jobs.slots", "5.0", id="float-as-int"),
        pytest.param(
            {"artifacts": {"retention_days": False}},
            "artifacts.retention_days",
            "false",
            id="bool-as-days",
        ),
        pytest.param({"jobs": {"lease": True}}, "jobs.lease", "true", id="bool-as-duration"),
        pytest.param({"metrics": {"enabled": "yes"}}, "metrics.enabled", '"yes"', id="str-as-bool"),
        pytest.param({"metrics": {"enabled": 1}}, "metrics.enabled", "1", id="int-as-bool"),
        pytest.param({"state_dir": 5}, "state_dir", "5", id="int-as-path"),
    ],
)
def test_file_values_are_not_coerced(tmp_path, data, field, shown):
    path = write(tmp_path, json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_settings(CORE_SPEC, environ={"HOME": str(tmp_path)}, config_path=path)
    message = str(info.value)
    assert message.startswith(f"config error: {path}: {field}: Input should be a valid ")
    assert message.endswith(f"(got {shown})")


def test_file_values_of_the_right_type_still_parse(tmp_path):
    data = {
        "state_dir": str(tmp_path / "st"),
        "jobs": {"slots": 4, "lease": "1m30s", "grace": 5, "db_path": None},
        "artifacts": {"retention_days": 7},
        "metrics": {"enabled": True, "interval": 2.5},
        "log": {"level": "debug"},
    }
    path = write(tmp_path, json.dumps(data))
    s = load_settings(CORE_SPEC, environ={}, config_path=path).settings
    assert (s.jobs.slots, s.jobs.lease, s.jobs.grace) == (4, 90.0, 5.0)
    assert s.artifacts.retention_days == 7.0
    assert (s.metrics.enabled, s.metrics.interval) == (True, 2.5)
    assert s.state_dir == tmp_path / "st"
    assert s.jobs_db == tmp_path / "st" / "jobs.sqlite3"


def test_environment_strings_are_parsed():
    environ = {
        "HOMEOPS_STATE_DIR": "/srv/st",
        "HOMEOPS_JOBS_SLOTS": "5",
        "HOMEOPS_JOBS_LEASE": "45s",
        "HOMEOPS_METRICS_ENABLED": "true",
        "HOMEOPS_ARTIFACTS_RETENTION_DAYS": "0.5",
    }
    s = load_settings(CORE_SPEC, environ=environ).settings
    assert (s.jobs.slots, s.jobs.lease, s.metrics.enabled) == (5, 45.0, True)
    assert s.artifacts.retention_days == 0.5


def test_file_secret_strictness_never_echoes_the_value(tmp_path):
    path = write(tmp_path, json.dumps({"token": 12345678901234567890123}))
    with pytest.raises(ConfigError) as info:
        load_settings(VAULT, environ={}, config_path=path)
    assert str(info.value).startswith(f"config error: {path}: token: Input should be a valid")
    assert "1234" not in str(info.value)


# -- paths: empty refused, ~ expanded --------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"state_dir": ""}, id="state-dir"),
        pytest.param({"artifacts": {"root": ""}}, id="artifacts-root"),
        pytest.param({"jobs": {"db_path": "  "}}, id="db-path-blank"),
        pytest.param({"metrics": {"path": ""}}, id="metrics-path"),
    ],
)
def test_empty_path_in_file_refused(tmp_path, data):
    path = write(tmp_path, json.dumps(data))
    with pytest.raises(ConfigError, match=r": empty path \(leave the setting out"):
        load_settings(CORE_SPEC, environ={"HOME": str(tmp_path)}, config_path=path)


def test_blank_path_in_environment_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^config error: HOMEOPS_ARTIFACTS_ROOT: .*empty path"):
        load_settings(CORE_SPEC, environ={"HOME": str(tmp_path), "HOMEOPS_ARTIFACTS_ROOT": " "})


def test_tilde_expanded_from_file_and_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    path = write(tmp_path, json.dumps({"state_dir": "~/x", "metrics": {"path": "~"}}))
    s = load_settings(CORE_SPEC, environ={"HOME": str(home)}, config_path=path).settings
    assert s.state_dir == home / "x"
    assert s.artifacts_root == home / "x" / "artifacts"
    assert s.metrics.path == home
    environ = {"HOME": str(home), "HOMEOPS_STATE_DIR": "~/y", "HOMEOPS_ARTIFACTS_ROOT": "~/a"}
    s = load_settings(CORE_SPEC, environ=environ).settings
    assert (s.state_dir, s.jobs_db, s.artifacts_root) == (
        home / "y",
        home / "y" / "jobs.sqlite3",
        home / "a",
    )
    assert default_state_dir(environ) == home / "y"
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        pytest.param({"HOMEOPS_STATE_DIR": "~root/x"}, "not ~user", id="tilde-user"),
        pytest.param({"HOMEOPS_STATE_DIR": "~/x", "HOME": "rel"}, "is not absolute", id="rel-home"),
    ],
)
def test_unexpandable_tilde_refused(environ, reason):
    with pytest.raises(
        ConfigError, match=rf"^config error: HOMEOPS_STATE_DIR: state_dir: .*{reason}"
    ):
        load_settings(CORE_SPEC, environ=environ)


# -- secrets from files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"s3cret-value\r\n", id="crlf"),
        pytest.param(b"s3cret-value\n", id="lf"),
        pytest.param(b"s3cret-value\r", id="cr"),
        pytest.param(b"s3cret-value", id="none"),
    ],
)
def test_secret_file_line_ending_stripped(tmp_path, content):
    # Files written on Windows (or by an editor set to CRLF) end in \r\n; a kept \r makes
    # every authentication with the secret fail in a way nobody can see in the logs.
    secret_file = tmp_path / "ws"
    secret_file.write_bytes(content)
    from_env = load_settings(SPEC, environ={"DEMO_PLAYWRIGHT_WS_PATH_FILE": str(secret_file)})
    path = write(tmp_path, json.dumps({"playwright": {"ws_path_file": str(secret_file)}}))
    from_json = load_settings(SPEC, environ={}, config_path=path)
    for loaded in (from_env, from_json):
        ws_path = loaded.settings.playwright.ws_path
        assert ws_path is not None
        assert ws_path.get_secret_value() == "s3cret-value"


@pytest.mark.parametrize("lease", ["1ms", "0.5s", "999ms"])
def test_a_lease_shorter_than_a_heartbeat_is_refused(lease, monkeypatch, capsys):
    # HOMEOPS_JOBS_LEASE=1ms was accepted and every job then failed "lease expired".
    from tests.core.test_cli import run_main

    monkeypatch.setenv("HOMEOPS_JOBS_LEASE", lease)
    code, _, err = run_main(capsys, "config", "show")
    assert code == 2
    assert "jobs.lease" in err
    assert "must be at least 1s" in err
    monkeypatch.setenv("HOMEOPS_JOBS_LEASE", "1s")
    code, _, err = run_main(capsys, "config", "show")
    assert code == 0, err


@pytest.mark.parametrize("text", ["\u0663s", "\u0663", "1\u0660m", "\uff15s"])
def test_durations_take_only_ascii_digits(text):
    from homeops.core.durations import parse_duration

    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_home_of_slash_expands_without_a_double_slash():
    from homeops.core.config import expand_path

    assert expand_path("~/x", {"HOME": "/"}) == "/x"
    assert expand_path("~", {"HOME": "/home/a"}) == "/home/a"
    assert expand_path("~/x/y", {"HOME": "/home/a/"}) == "/home/a/x/y"


def test_failpoint_from_the_environment_is_trimmed(monkeypatch, capsys):
    from tests.core.test_cli import run_main

    monkeypatch.setenv("HOMEOPS_SUPERVISOR_FAILPOINT", " tool.git ")
    code, out, err = run_main(capsys, "config", "show", "--json")
    assert code == 0, err
    assert json.loads(out)["settings"]["supervisor.failpoint"]["value"] == "tool.git"


# -- hostile-user review of win-automation: secrets, aliases, addresses, paths, numbers ----


def _one_line_config_error(exc: ConfigError) -> str:
    message = str(exc)
    assert exc.exit_code == ExitCode.USAGE
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="zero-bytes"),
        pytest.param(b"\n", id="newline"),
        pytest.param(b"\r\n", id="crlf"),
        pytest.param(b"  \t\n", id="blank"),
    ],
)
def test_empty_secret_file_is_refused(tmp_path, content):
    # An empty file counted as a configured secret: config show said ***, doctor ran (and
    # failed) the check that needs it.
    secret_file = tmp_path / "ws"
    secret_file.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_settings(SPEC, environ={"DEMO_PLAYWRIGHT_WS_PATH_FILE": str(secret_file)})
    assert _one_line_config_error(info.value) == (
        "config error: DEMO_PLAYWRIGHT_WS_PATH_FILE: playwright.ws_path: "
        f"secret file is empty: {str(secret_file)!r}"
    )
    path = write(tmp_path, json.dumps({"playwright": {"ws_path_file": str(secret_file)}}))
    with pytest.raises(ConfigError) as info:
        load_settings(SPEC, environ={}, config_path=path)
    assert _one_line_config_error(info.value).startswith(
        f"config error: {path}: playwright.ws_path_file: secret file is empty: "
    )


def test_secret_value_and_file_in_the_environment_are_refused_together(tmp_path):
    secret_file = tmp_path / "ws"
    secret_file.write_text("from-the-file")
    environ = {
        "DEMO_PLAYWRIGHT_WS_PATH": "from-the-variable",
        "DEMO_PLAYWRIGHT_WS_PATH_FILE": str(secret_file),
    }
    with pytest.raises(ConfigError) as info:
        load_settings(SPEC, environ=environ)
    message = _one_line_config_error(info.value)
    assert message == (
        "config error: DEMO_PLAYWRIGHT_WS_PATH: playwright.ws_path: give either "
        "DEMO_PLAYWRIGHT_WS_PATH or DEMO_PLAYWRIGHT_WS_PATH_FILE, not both"
    )
    assert "from-the" not in message


class Aliased(Section):
    days: float = Field(
        default=7.0, ge=0, description="d", json_schema_extra=env_names("AL_DAY", "AL_D")
    )
    token: SecretStr | None = Field(
        default=None, description="t", json_schema_extra=env_names("AL_TOK")
    )


ALIASED = SettingsSpec(Aliased, "AL", "AL_CONFIG")


@pytest.mark.parametrize(
    ("environ", "refused"),
    [
        pytest.param({"AL_DAYS": "5", "AL_DAY": "9"}, ("AL_DAYS", "AL_DAY"), id="two-values"),
        pytest.param({"AL_DAY": "5", "AL_D": "9"}, ("AL_DAY", "AL_D"), id="two-aliases"),
        pytest.param({"AL_TOKEN": "a" * 8, "AL_TOK": "b" * 8}, ("AL_TOKEN", "AL_TOK"), id="secret"),
        pytest.param(
            {"AL_TOKEN": "a" * 8, "AL_TOK_FILE": "/x"}, ("AL_TOKEN", "AL_TOK_FILE"), id="mixed"
        ),
        pytest.param(
            {"AL_TOKEN_FILE": "/x", "AL_TOK_FILE": "/y"},
            ("AL_TOKEN_FILE", "AL_TOK_FILE"),
            id="two-files",
        ),
    ],
)
def test_names_of_one_setting_that_disagree_are_refused(environ, refused):
    with pytest.raises(ConfigError) as info:
        load_settings(ALIASED, environ=environ)
    message = _one_line_config_error(info.value)
    assert message.startswith(f"config error: {refused[0]}: ")
    assert all(name in message for name in refused)
    assert "aaaa" not in message  # a secret's value is never echoed
    if "DAYS" in refused[0] or refused[0] == "AL_DAY":
        assert "keep one of the two" in message


def test_names_of_one_setting_that_agree_are_fine(tmp_path):
    loaded = load_settings(ALIASED, environ={"AL_DAYS": "5", "AL_DAY": "5", "AL_D": "5"})
    assert loaded.settings.days == 5.0
    assert loaded.sources["days"] == "env:AL_DAYS"
    secret_file = tmp_path / "tok"
    secret_file.write_text("same-file")
    environ = {"AL_TOKEN_FILE": str(secret_file), "AL_TOK_FILE": str(secret_file)}
    token = load_settings(ALIASED, environ=environ).settings.token
    assert token is not None
    assert token.get_secret_value() == "same-file"


def test_another_tools_names_rank_below_the_fields_own():
    # README: the core's own name wins over a seed tool's; the seed's two spellings of one
    # setting must still agree with each other.
    spec = CORE_SPEC.with_extra_env({"artifacts.retention_days": ("SEED_DAYS", "SEED_DAYZ")})
    environ = {"HOMEOPS_ARTIFACTS_RETENTION_DAYS": "3", "SEED_DAYS": "4", "SEED_DAYZ": "4"}
    loaded = load_settings(spec, environ=environ)
    assert loaded.settings.artifacts.retention_days == 3.0
    with pytest.raises(ConfigError, match=r"^config error: SEED_DAYS: .*SEED_DAYZ is set too"):
        load_settings(spec, environ={**environ, "SEED_DAYZ": "5"})


# -- addresses --------------------------------------------------------------------------------


class Peers(Section):
    url: HttpUrlStr = Field(default="http://127.0.0.1:1/", description="u")
    grpc: HostPort = Field(default="localhost:7077", description="g")
    host: Hostname = Field(default="localhost", description="h")
    user: LoginName = Field(default="admin", description="n")


PEERS = SettingsSpec(Peers, "PEER", "PEER_CONFIG")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("url", "http://127.0.0.1:7887/", id="url-ip"),
        pytest.param("url", "https://aloha.example:443/x?y=1", id="url-https-path"),
        pytest.param("url", "http://[::1]:8080", id="url-ipv6"),
        pytest.param("url", "HTTP://Host", id="url-upper"),
        pytest.param("grpc", "localhost:7077", id="grpc-name"),
        pytest.param("grpc", "10.0.2.2:7077", id="grpc-ip"),
        pytest.param("grpc", "[::1]:7077", id="grpc-ipv6"),
        pytest.param("host", "vm.lan.", id="host-fqdn"),
        pytest.param("host", "::1", id="host-ipv6"),
        pytest.param("host", "win_vm-1", id="host-underscore"),
        pytest.param("user", r"DOMAIN\admin", id="user-domain"),
        pytest.param("user", "admin@corp.example", id="user-upn"),
    ],
)
def test_addresses_that_are_accepted(field, value):
    loaded = load_settings(PEERS, environ={f"PEER_{field.upper()}": value})
    assert getattr(loaded.settings, field) == value


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        pytest.param("url", "not a url", "not an http(s) URL", id="url-words"),
        pytest.param("url", "file:///etc/passwd", "not an http(s) URL", id="url-file"),
        pytest.param("url", "gopher://127.0.0.1:1", "not an http(s) URL", id="url-gopher"),
        pytest.param("url", "http://", "URL has no host", id="url-no-host"),
        pytest.param("url", "http://h:99999/", "port out of range", id="url-port-range"),
        pytest.param("url", "http://h:0/", "port must be 1-65535", id="url-port-0"),
        pytest.param("url", "http://h:x/", "not a valid URL", id="url-port-text"),
        pytest.param("url", "http://h:/", "empty port", id="url-port-empty"),
        pytest.param("url", "http://a b/", "whitespace", id="url-space"),
        pytest.param("url", "http://h/\x00", "control", id="url-nul"),
        pytest.param("url", "http://u:pw@h/", "no user or password", id="url-credentials"),
        pytest.param("url", "http://-oProxy/", "must not start with '-'", id="url-dash-host"),
        pytest.param("grpc", "nope", "expected host:port", id="grpc-no-port"),
        pytest.param("grpc", "h:0", "port must be 1-65535", id="grpc-port-0"),
        pytest.param("grpc", "h:70000", "port must be 1-65535", id="grpc-port-big"),
        pytest.param("grpc", "h:7o77", "port must be 1-65535", id="grpc-port-text"),
        pytest.param("grpc", "::1:7077", "[address]:port", id="grpc-bare-ipv6"),
        pytest.param("grpc", "[::1]", "expected [IPv6 address]:port", id="grpc-ipv6-no-port"),
        pytest.param("grpc", "[vm]:7077", "expected [IPv6 address]:port", id="grpc-brackets"),
        pytest.param("grpc", ":7077", "empty host", id="grpc-no-host"),
        pytest.param("grpc", "bad host:1", "whitespace", id="grpc-space"),
        pytest.param("host", "bad host name with spaces", "whitespace", id="host-spaces"),
        pytest.param("host", "-oProxyCommand=x", "must not start with '-'", id="host-dash"),
        pytest.param("host", "h\x1b[2J", "control", id="host-escape"),
        pytest.param("host", "a..b", "not a host name", id="host-empty-label"),
        pytest.param("host", "[::1]", "without brackets", id="host-brackets"),
        pytest.param("host", "x" * 64, "not a host name", id="host-long-label"),
        pytest.param("user", "-oProxyCommand=touch /tmp/PWNED", "must not start", id="user-dash"),
        pytest.param("user", "ad min", "whitespace", id="user-space"),
        pytest.param("user", "admin\n", "control", id="user-newline"),
    ],
)
def test_addresses_that_are_refused(field, value, reason):
    variable = f"PEER_{field.upper()}"
    with pytest.raises(ConfigError) as info:
        load_settings(PEERS, environ={variable: value})
    message = _one_line_config_error(info.value)
    assert message.startswith(f"config error: {variable}: {field}: "), message
    assert reason in message


def test_addresses_in_the_file_name_the_file_and_field(tmp_path):
    path = write(tmp_path, json.dumps({"url": "not a url"}))
    with pytest.raises(ConfigError) as info:
        load_settings(PEERS, environ={}, config_path=path)
    assert str(info.value) == (f'config error: {path}: url: not an http(s) URL (got "not a url")')


def test_addresses_are_trimmed():
    loaded = load_settings(PEERS, environ={"PEER_URL": " http://h:1/ ", "PEER_HOST": " vm "})
    assert (loaded.settings.url, loaded.settings.host) == ("http://h:1/", "vm")


# -- paths ------------------------------------------------------------------------------------


class Files(Section):
    key: ExistingFile | None = Field(default=None, description="k")
    log: FileLocation | None = Field(default=None, description="l")
    out: DirLocation | None = Field(default=None, description="o")


FILES = SettingsSpec(Files, "FS", "FS_CONFIG")


def test_path_settings_are_checked_by_a_stat(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    cases = [
        ("FS_KEY", str(tmp_path), "key: is a directory, not a file"),
        ("FS_KEY", str(tmp_path / "missing"), "key: no such file"),
        ("FS_KEY", str(a_file / "below"), "key: cannot be read: Not a directory"),
        ("FS_KEY", "/dev/null", "key: not a regular file"),
        ("FS_LOG", str(tmp_path), "log: is a directory"),
        ("FS_OUT", str(a_file), "out: not a directory"),
    ]
    for variable, value, reason in cases:
        with pytest.raises(ConfigError) as info:
            load_settings(FILES, environ={variable: value})
        assert _one_line_config_error(info.value) == (
            f"config error: {variable}: {reason} (got {value!r})"
        )
    fine = {"FS_KEY": str(a_file), "FS_LOG": str(tmp_path / "new.log"), "FS_OUT": str(tmp_path)}
    loaded = load_settings(FILES, environ=fine).settings
    assert (loaded.key, loaded.log, loaded.out) == (a_file, tmp_path / "new.log", tmp_path)
    assert load_settings(FILES, environ={"FS_OUT": str(tmp_path / "to-create")}).settings.out


def test_unreadable_key_is_refused(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    key = tmp_path / "id"
    key.write_text("x")
    key.chmod(0)
    with pytest.raises(ConfigError, match=r"^config error: FS_KEY: key: cannot be read"):
        load_settings(FILES, environ={"FS_KEY": str(key)})


def test_a_missing_file_in_the_config_file_names_the_file_and_field(tmp_path):
    path = write(tmp_path, json.dumps({"key": "~/id"}))
    with pytest.raises(ConfigError) as info:
        load_settings(FILES, environ={"HOME": str(tmp_path)}, config_path=path)
    # Checked as it will be used: ~ expanded.
    assert str(info.value) == (f'config error: {path}: key: no such file (got "{tmp_path / "id"}")')
    (tmp_path / "id").write_text("k")
    loaded = load_settings(FILES, environ={"HOME": str(tmp_path)}, config_path=path)
    assert loaded.settings.key == tmp_path / "id"


def test_relative_paths_are_made_absolute_at_load(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    environ = {"HOME": str(tmp_path), "HOMEOPS_STATE_DIR": "st", "HOMEOPS_ARTIFACTS_ROOT": "./a"}
    s = load_settings(CORE_SPEC, environ=environ).settings
    assert (s.state_dir, s.jobs_db, s.artifacts_root) == (
        work / "st",
        work / "st" / "jobs.sqlite3",
        work / "a",
    )
    assert default_state_dir(environ) == work / "st"
    path = write(tmp_path, json.dumps({"state_dir": "from-file", "metrics": {"path": "m.log"}}))
    s = load_settings(CORE_SPEC, environ={"HOME": str(tmp_path)}, config_path=path).settings
    assert (s.state_dir, s.metrics.path) == (work / "from-file", work / "m.log")
    # Another directory later changes nothing: the values are absolute.
    monkeypatch.chdir(tmp_path)
    assert s.jobs_db == work / "from-file" / "jobs.sqlite3"


def test_relative_path_when_the_current_directory_is_gone(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(ConfigError, match=r"^config error: HOMEOPS_ARTIFACTS_ROOT: .*is gone"):
        load_settings(CORE_SPEC, environ={"HOME": "/h", "HOMEOPS_ARTIFACTS_ROOT": "a"})


def test_state_dir_that_is_a_file_is_a_config_error(tmp_path, monkeypatch, capsys):
    from tests.core.test_cli import run_main

    a_file = tmp_path / "afile"
    a_file.write_text("x")
    expected = f"config error: HOMEOPS_STATE_DIR: state_dir: not a directory (got {str(a_file)!r})"
    with pytest.raises(ConfigError) as info:
        default_state_dir({"HOMEOPS_STATE_DIR": str(a_file)})
    assert str(info.value) == expected
    with pytest.raises(ConfigError) as info:
        load_settings(CORE_SPEC, environ={"HOMEOPS_STATE_DIR": str(a_file)})
    assert str(info.value) == expected
    path = write(tmp_path, json.dumps({"state_dir": str(a_file)}))
    with pytest.raises(ConfigError) as info:
        load_settings(CORE_SPEC, environ={"HOME": str(tmp_path)}, config_path=path)
    assert str(info.value) == f'config error: {path}: state_dir: not a directory (got "{a_file}")'
    # jobs list finds its store without the settings; it must say the same, exit 2.
    monkeypatch.setenv("HOMEOPS_STATE_DIR", str(a_file))
    for args in (("jobs", "list"), ("config", "show"), ("jobs", "status", "--id", "j1")):
        code, out, err = run_main(capsys, *args)
        assert (code, out, err) == (2, "", f"{expected}\n"), args


# -- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400", "Infinity"])
@pytest.mark.parametrize(
    ("variable", "field"),
    [
        pytest.param("HOMEOPS_ARTIFACTS_RETENTION_DAYS", "artifacts.retention_days", id="float"),
        pytest.param("HOMEOPS_JOBS_RETENTION_DAYS", "jobs.retention_days", id="float-bounded"),
        pytest.param("HOMEOPS_JOBS_SLOTS", "jobs.slots", id="int"),
        pytest.param("HOMEOPS_JOBS_LEASE", "jobs.lease", id="duration"),
    ],
)
def test_non_finite_numbers_say_not_a_number(variable, field, value):
    with pytest.raises(ConfigError) as info:
        load_settings(CORE_SPEC, environ={"HOME": "/h", variable: value})
    message = _one_line_config_error(info.value)
    assert message.startswith(f"config error: {variable}: {field}: ")
    assert "not a number" in message
    assert "greater than" not in message


def test_non_finite_number_in_the_file_says_not_a_number(tmp_path):
    # Python's json reads 1e400 as inf.
    path = write(tmp_path, '{"artifacts": {"retention_days": 1e400}}')
    with pytest.raises(ConfigError) as info:
        load_settings(CORE_SPEC, environ={"HOME": "/h"}, config_path=path)
    assert str(info.value) == (
        f"config error: {path}: artifacts.retention_days: not a number (got inf)"
    )


@pytest.mark.parametrize("text", ["nan", "inf", "1e400", "Infinity"])
def test_parse_duration_says_not_a_number(text):
    with pytest.raises(ValueError, match=r"^invalid duration '.*': not a number$"):
        parse_duration(text)


# -- quoted input is cut ----------------------------------------------------------------------


def test_quoted_input_is_cut_to_80_characters():
    assert quote_input("abc") == "'abc'"
    assert quote_input("x" * 80) == repr("x" * 80)
    assert quote_input("x" * 100000) == f"{'x' * 80!r}... (100000 chars)"
    assert quote_input("y" * 81, json.dumps) == f'"{"y" * 80}"... (81 chars)'
    assert quote_input(5) == "5"


def test_a_huge_value_is_not_echoed_whole():
    huge = "x" * 100000
    for environ in ({"HOMEOPS_JOBS_SLOTS": huge}, {"HOMEOPS_JOBS_LEASE": huge}):
        with pytest.raises(ConfigError) as info:
            load_settings(CORE_SPEC, environ={"HOME": "/h", **environ})
        message = _one_line_config_error(info.value)
        assert "... (100000 chars)" in message
        assert len(message) < 300, message
    error = ConfigError("/" + huge, "a." + huge, "unknown key")
    # A source or field is cut only past 1024 characters: real paths can be long.
    assert len(str(error)) < 2200
    assert str(error).endswith("... (100002 chars): unknown key")
    long_path = "/nix/store/" + "h" * 32 + "-win-automation.json/" + "d" * 60
    assert ConfigError(long_path, "", "bad").source in str(ConfigError(long_path, "", "bad"))
    assert error.source == "/" + huge  # the attributes keep the whole value
