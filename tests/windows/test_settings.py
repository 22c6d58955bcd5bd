"""The windows domain's settings: the seed's names, defaults, env spellings and secrets, and
the core settings its own file and names set in the seed tool."""

import json
from pathlib import Path

import pytest

from homeops.core.config import load_settings
from homeops.core.errors import ConfigError
from homeops.core.umbrella import DomainConfig, load_config_set
from homeops.windows import CORE_ENV, CORE_KEYS
from homeops.windows.settings import SPEC


def load(environ=None, data=None, tmp_path=None):
    path = None
    if data is not None:
        path = tmp_path / "win.json"
        path.write_text(json.dumps(data))
    return load_settings(SPEC, environ=environ or {}, config_path=path)


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        pytest.param("windows.ssh_host", "localhost", id="ssh-host"),
        pytest.param("windows.ssh_port", 22555, id="ssh-port"),
        pytest.param("windows.ssh_user", "administrator", id="ssh-user"),
        pytest.param("aloha.server_url", "http://127.0.0.1:7887/", id="aloha-server"),
        pytest.param("aloha.client_url", "http://127.0.0.1:7888", id="aloha-client"),
        pytest.param("hatchet.http_url", "http://localhost:8888", id="hatchet-http"),
        pytest.param("hatchet.grpc_address", "localhost:7077", id="hatchet-grpc"),
        pytest.param("hatchet.health_url", "http://localhost:8733", id="hatchet-health"),
        pytest.param("hatchet.worker_concurrency", 10, id="concurrency"),
        pytest.param("hatchet.tls_strategy", "none", id="tls"),
        pytest.param("playwright.host", "127.0.0.1", id="pw-host"),
        pytest.param("playwright.port", 9323, id="pw-port"),
    ],
)
def test_seed_defaults(dotted, value):
    node: object = load().settings
    for key in dotted.split("."):
        node = getattr(node, key)
    assert node == value


@pytest.mark.parametrize(
    ("variable", "dotted", "raw", "want"),
    [
        pytest.param("WIN_AUTOMATION_WINDOWS_SSH_HOST", "windows.ssh_host", "vm", "vm", id="host"),
        pytest.param(
            "WIN_AUTOMATION_WINDOWS_SSH_PORT", "windows.ssh_port", "2222", 2222, id="port"
        ),
        pytest.param("WIN_AUTOMATION_PLAYWRIGHT_PORT", "playwright.port", "9000", 9000, id="pw"),
        pytest.param(
            "WIN_AUTOMATION_ARTIFACT_OUT", "artifacts.out_dir", "/a", Path("/a"), id="out"
        ),
        pytest.param(
            "WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS",
            "artifacts.retention_days",
            "14",
            14.0,
            id="retention",
        ),
        pytest.param(
            "WIN_AUTOMATION_METRICS_PATH", "worker.metrics_path", "/m.log", Path("/m.log"), id="m"
        ),
        pytest.param(
            "WIN_AUTOMATION_SUPERVISOR_FAILPOINT",
            "supervisor.failpoint",
            "aloha_server",
            "aloha_server",
            id="failpoint",
        ),
        pytest.param(
            "WIN_AUTOMATION_HATCHET_JOB_TIMEOUT", "hatchet.job_timeout", "1h", 3600.0, id="d"
        ),
    ],
)
def test_seed_environment_names(variable, dotted, raw, want):
    loaded = load({variable: raw})
    node: object = loaded.settings
    for key in dotted.split("."):
        node = getattr(node, key)
    assert node == want
    assert loaded.sources[dotted] == f"env:{variable}"


@pytest.mark.parametrize(
    ("variable", "dotted"),
    [
        pytest.param("WIN_AUTOMATION_HATCHET_TOKEN_FILE", "hatchet.token", id="token"),
        pytest.param("WIN_AUTOMATION_PLAYWRIGHT_WS_PATH_FILE", "playwright.ws_path", id="ws-path"),
    ],
)
def test_secrets_from_files(tmp_path, variable, dotted):
    secret = tmp_path / "s"
    secret.write_text("s3cr3t-value\n")
    loaded = load({variable: str(secret)})
    section, field = dotted.split(".")
    assert getattr(getattr(loaded.settings, section), field).get_secret_value() == "s3cr3t-value"


def test_secret_file_key_in_the_json_file(tmp_path):
    secret = tmp_path / "tok"
    secret.write_text("jwt")
    loaded = load(data={"hatchet": {"token_file": str(secret)}}, tmp_path=tmp_path)
    assert loaded.settings.hatchet.token.get_secret_value() == "jwt"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        pytest.param({"windows": {"ssh_port": 0}}, "windows.ssh_port", id="port"),
        pytest.param({"windows": {"ssh_host": ""}}, "windows.ssh_host", id="empty-host"),
        pytest.param({"hatchet": {"tls_strategy": "ssl"}}, "hatchet.tls_strategy", id="tls"),
        pytest.param({"hatchet": {"job_timeout": "0s"}}, "hatchet.job_timeout", id="timeout"),
        pytest.param({"worker": {"metrics": "yes"}}, "worker.metrics", id="bool"),
        pytest.param({"playwright": {"wspath": "x"}}, "playwright.wspath", id="typo"),
    ],
)
def test_bad_values_name_the_field(tmp_path, data, where):
    with pytest.raises(ConfigError) as info:
        load(data=data, tmp_path=tmp_path)
    assert info.value.field == where


def _seed_config(tmp_path, data, environ=None):
    path = tmp_path / "win.json"
    path.write_text(json.dumps(data))
    env = {"HOMEOPS_STATE_DIR": str(tmp_path / "state"), **(environ or {})}
    domains = {"windows": DomainConfig(lambda: SPEC, CORE_ENV, CORE_KEYS)}
    return load_config_set(domains, environ=env, config_path=path, seed="windows")


def test_seed_file_sets_the_core_settings_it_names(tmp_path):
    config = _seed_config(
        tmp_path,
        {
            "artifacts": {"out_dir": str(tmp_path / "art"), "retention_days": 14},
            "worker": {"metrics": True, "metrics_interval": "15s", "metrics_path": "/tmp/m"},
            "supervisor": {"interval": "45s"},
            "hatchet": {"worker_concurrency": 4, "retry_max": 5},
        },
    )
    core = config.core.settings
    assert (core.jobs.slots, core.jobs.max_attempts) == (4, 5)
    assert core.artifacts.root == tmp_path / "art"
    assert core.artifacts.retention_days == 14
    assert (core.metrics.enabled, core.metrics.interval) == (True, 15.0)
    assert core.metrics.path == Path("/tmp/m")
    assert core.supervisor.interval == 45.0
    assert config.domain("windows").settings.artifacts.retention_days == 14


def test_seed_env_names_set_core_settings_over_the_file(tmp_path):
    config = _seed_config(
        tmp_path,
        {"artifacts": {"retention_days": 14}},
        {"WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS": "3", "WIN_AUTOMATION_METRICS_PATH": "/x/m"},
    )
    core = config.core
    assert core.settings.artifacts.retention_days == 3
    assert core.sources["artifacts.retention_days"] == "env:WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS"
    assert core.settings.metrics.path == Path("/x/m")


def test_seed_worker_concurrency_env_sets_the_worker_slots(tmp_path):
    config = _seed_config(
        tmp_path,
        {"hatchet": {"worker_concurrency": 4}},
        {"WIN_AUTOMATION_HATCHET_WORKER_CONCURRENCY": "7", "WIN_AUTOMATION_HATCHET_RETRY_MAX": "2"},
    )
    assert (config.core.settings.jobs.slots, config.core.settings.jobs.max_attempts) == (7, 2)
    assert config.domain("windows").settings.hatchet.worker_concurrency == 7


def test_every_core_key_names_real_fields():
    from homeops.core.settings import CoreSettings
    from homeops.windows.settings import WindowsSettings

    def has(model, dotted):
        for key in dotted.split("."):
            field = model.model_fields[key]
            model = field.annotation
        return True

    for seed_key, core_key in CORE_KEYS.items():
        assert has(WindowsSettings, seed_key), seed_key
        assert has(CoreSettings, core_key), core_key
    assert set(CORE_ENV) <= set(CORE_KEYS.values())


def test_umbrella_section_and_config_show(capsys, tmp_path, state_dir):
    from homeops.cli import run_console

    f = tmp_path / "homelab.json"
    f.write_text(json.dumps({"windows": {"windows": {"ssh_host": "127.0.0.1"}}}))
    code = run_console("homeops", ["config", "show", "--json", "--config", str(f)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    shown = json.loads(out)["settings"]
    assert shown["windows.windows.ssh_host"] == {"value": "127.0.0.1", "source": f"file:{f}"}
    assert shown["windows.playwright.port"]["value"] == 9323
    f.write_text(json.dumps({"windows": {"windows": {"ssh_port": 0}}}))
    code = run_console("homeops", ["config", "show", "--config", str(f)])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith(f"config error: {f}: windows.windows.ssh_port: ")


def test_vm_target_from_settings(tmp_path):
    from homeops.core.ssh.model import HostKeyPolicy
    from homeops.windows.target import vm_target

    (tmp_path / "id").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    loaded = load(
        {"WIN_AUTOMATION_WINDOWS_SSH_IDENTITY_FILE": str(tmp_path / "id")},
        data={"windows": {"known_hosts": str(tmp_path / "kh"), "ssh_port": 2222}},
        tmp_path=tmp_path,
    )
    target = vm_target(loaded.settings.windows)
    assert target.destination == "administrator@localhost:2222"
    assert (target.identity_file, target.known_hosts) == (tmp_path / "id", tmp_path / "kh")
    assert target.host_key_policy is HostKeyPolicy.STRICT
    assert target.remote_shell == "powershell"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        pytest.param({"worker": {"metrics_interval": "0s"}}, "worker.metrics_interval", id="m"),
        pytest.param({"supervisor": {"interval": "0s"}}, "supervisor.interval", id="sup"),
    ],
)
def test_core_values_are_refused_under_the_seeds_key(tmp_path, data, where):
    with pytest.raises(ConfigError) as info:
        _seed_config(tmp_path, data)
    assert info.value.field == where


# -- hostile-user review: every refusal is exit 2 with one line naming source and field ------


def _show(capsys, *args, environ=None, monkeypatch=None):
    from homeops.cli import run_console

    for name, value in (environ or {}).items():
        assert monkeypatch is not None
        monkeypatch.setenv(name, value)
    code = run_console("win-automation", ["config", "show", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("content", [b"", b"\n"], ids=["zero-bytes", "newline"])
def test_empty_token_file_is_refused(capsys, monkeypatch, tmp_path, state_dir, content):
    token = tmp_path / "token"
    token.write_bytes(content)
    code, out, err = _show(
        capsys, environ={"WIN_AUTOMATION_HATCHET_TOKEN_FILE": str(token)}, monkeypatch=monkeypatch
    )
    assert (code, out) == (2, "")
    assert err == (
        "config error: WIN_AUTOMATION_HATCHET_TOKEN_FILE: hatchet.token: "
        f"secret file is empty: {str(token)!r}\n"
    )
    monkeypatch.delenv("WIN_AUTOMATION_HATCHET_TOKEN_FILE")
    config = tmp_path / "win.json"
    config.write_text(json.dumps({"hatchet": {"token_file": str(token)}}))
    code, out, err = _show(capsys, "--config", str(config))
    assert (code, out) == (2, "")
    assert err.startswith(f"config error: {config}: hatchet.token_file: secret file is empty: ")
    assert err.count("\n") == 1


def test_token_and_token_file_together_are_refused(capsys, monkeypatch, tmp_path, state_dir):
    token = tmp_path / "token"
    token.write_text("jwt-from-file")
    environ = {
        "WIN_AUTOMATION_HATCHET_TOKEN": "jwt-from-variable",
        "WIN_AUTOMATION_HATCHET_TOKEN_FILE": str(token),
    }
    code, out, err = _show(capsys, environ=environ, monkeypatch=monkeypatch)
    assert (code, out) == (2, "")
    assert err == (
        "config error: WIN_AUTOMATION_HATCHET_TOKEN: hatchet.token: give either "
        "WIN_AUTOMATION_HATCHET_TOKEN or WIN_AUTOMATION_HATCHET_TOKEN_FILE, not both\n"
    )


def test_seed_aliases_that_disagree_are_refused(capsys, monkeypatch, tmp_path, state_dir):
    environ = {
        "WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS": "5",
        "WIN_AUTOMATION_ARTIFACTS_RETENTION_DAYS": "9",
    }
    code, out, err = _show(capsys, environ=environ, monkeypatch=monkeypatch)
    assert (code, out) == (2, "")
    assert err.startswith("config error: WIN_AUTOMATION_ARTIFACT")
    assert ": artifacts.retention_days: " in err
    assert all(name in err for name in environ)
    assert err.count("\n") == 1
    # The domain's own model refuses it too (homeops loads it without the seed's core names).
    with pytest.raises(ConfigError) as info:
        load(environ)
    assert info.value.field == "artifacts.retention_days"
    # The same value twice is fine.
    monkeypatch.setenv("WIN_AUTOMATION_ARTIFACTS_RETENTION_DAYS", "5")
    code, out, err = _show(capsys, "--json", monkeypatch=monkeypatch)
    assert (code, err) == (0, "")
    assert json.loads(out)["settings"]["artifacts.retention_days"]["value"] == 5.0


@pytest.mark.parametrize(
    ("data", "where", "reason"),
    [
        pytest.param(
            {"aloha": {"server_url": "not a url"}},
            "aloha.server_url",
            'not an http(s) URL (got "not a url")',
            id="words",
        ),
        pytest.param(
            {"aloha": {"client_url": "file:///etc/passwd"}},
            "aloha.client_url",
            "not an http(s) URL",
            id="file-url",
        ),
        pytest.param(
            {"hatchet": {"health_url": "gopher://127.0.0.1:1"}},
            "hatchet.health_url",
            "not an http(s) URL",
            id="gopher",
        ),
        pytest.param(
            {"hatchet": {"http_url": "http://127.0.0.1:99999"}},
            "hatchet.http_url",
            "port out of range",
            id="port",
        ),
        pytest.param(
            {"hatchet": {"grpc_address": "nope"}},
            "hatchet.grpc_address",
            "expected host:port",
            id="grpc",
        ),
        pytest.param(
            {"playwright": {"host": "bad host name with spaces"}},
            "playwright.host",
            "whitespace",
            id="pw-host",
        ),
        pytest.param(
            {"windows": {"ssh_host": "-oProxyCommand=x"}},
            "windows.ssh_host",
            "must not start with '-'",
            id="ssh-host",
        ),
    ],
)
def test_urls_and_hosts_are_checked_at_load(capsys, tmp_path, state_dir, data, where, reason):
    config = tmp_path / "win.json"
    config.write_text(json.dumps(data))
    code, out, err = _show(capsys, "--config", str(config))
    assert (code, out) == (2, "")
    assert err.startswith(f"config error: {config}: {where}: "), err
    assert reason in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("variable", "value", "where", "reason"),
    [
        pytest.param(
            "WIN_AUTOMATION_WINDOWS_SSH_IDENTITY_FILE",
            "/tmp",
            "windows.ssh_identity_file",
            "is a directory",
            id="identity-dir",
        ),
        pytest.param(
            "WIN_AUTOMATION_WINDOWS_SSH_IDENTITY_FILE",
            "/nonexistent",
            "windows.ssh_identity_file",
            "no such file (got '/nonexistent')",
            id="identity-missing",
        ),
        pytest.param(
            "WIN_AUTOMATION_WINDOWS_KNOWN_HOSTS",
            "/tmp",
            "windows.known_hosts",
            "is a directory",
            id="known-hosts-dir",
        ),
        pytest.param(
            "WIN_AUTOMATION_WINDOWS_SSH_USER",
            "-oProxyCommand=touch /tmp/PWNED",
            "windows.ssh_user",
            "must not start with '-'",
            id="user-option",
        ),
        pytest.param(
            "WIN_AUTOMATION_WINDOWS_SSH_USER",
            "admin\tx",
            "windows.ssh_user",
            "whitespace",
            id="user-tab",
        ),
        pytest.param(
            "WIN_AUTOMATION_WINDOWS_SSH_HOST",
            "vm\x1b[2J",
            "windows.ssh_host",
            "control",
            id="host-escape",
        ),
    ],
)
def test_ssh_settings_are_checked_at_load(
    capsys, monkeypatch, state_dir, variable, value, where, reason
):
    code, out, err = _show(capsys, environ={variable: value}, monkeypatch=monkeypatch)
    assert (code, out) == (2, "")
    assert err.startswith(f"config error: {variable}: {where}: "), err
    assert reason in err
    assert err.count("\n") == 1


def test_a_missing_known_hosts_file_is_accepted(tmp_path):
    # The VM's policy is strict: a missing file is an empty trust list, and the connect
    # then fails naming the file (accept-new, elsewhere, would create it). Not a config error.
    loaded = load({"WIN_AUTOMATION_WINDOWS_KNOWN_HOSTS": str(tmp_path / "none" / "kh")})
    assert loaded.settings.windows.known_hosts == tmp_path / "none" / "kh"


def test_relative_seed_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _seed_config(
        tmp_path,
        {"windows": {"known_hosts": "kh"}},
        {"WIN_AUTOMATION_ARTIFACT_OUT": "art", "WIN_AUTOMATION_METRICS_PATH": "./m.log"},
    )
    core = config.core.settings
    assert (core.artifacts.root, core.metrics.path) == (tmp_path / "art", tmp_path / "m.log")
    windows = config.domain("windows").settings
    assert windows.artifacts.out_dir == tmp_path / "art"
    assert windows.windows.known_hosts == tmp_path / "kh"


def test_artifact_out_that_is_a_file_is_refused(tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    with pytest.raises(ConfigError) as info:
        load({"WIN_AUTOMATION_ARTIFACT_OUT": str(a_file)})
    assert str(info.value) == (
        "config error: WIN_AUTOMATION_ARTIFACT_OUT: artifacts.out_dir: "
        f"not a directory (got {str(a_file)!r})"
    )


def test_non_finite_retention_says_not_a_number(tmp_path):
    for value in ("nan", "inf"):
        with pytest.raises(ConfigError) as info:
            load({"WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS": value})
        assert str(info.value) == (
            "config error: WIN_AUTOMATION_ARTIFACT_RETENTION_DAYS: artifacts.retention_days: "
            f"not a number (got {value!r})"
        )
