"""The NixOS module services.win-automation (nix/modules/win-automation.nix, issue 7 item 10).

It is evaluated with the mock module system in tests/nix/mock (no nixpkgs here; set
TEST_NIXPKGS_LIB to a nixpkgs ``lib`` directory to also check it against the real
``lib.evalModules``). The two units are rendered to unit files the way NixOS writes them and
linted with the real ``systemd-analyze``; the JSON config is loaded by homeops' own loader.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.nix.harness import (
    ROOT,
    lookup,
    make_mock_dir,
    needs_nix,
    real_lib,
    render_unit,
    run_nix,
    systemd_analyze,
)

MODULE = ROOT / "nix" / "modules" / "win-automation.nix"
WIN_AUTOMATION = ROOT / ".venv" / "bin" / "win-automation"
MOCK_PACKAGE = "/nix/store/mock-homeops"
UNITS = ("win-automation-worker", "win-automation-supervisor")

pytestmark = needs_nix

# Seed 000's "Full Configuration", as the user wrote it.
SEED_FULL = r"""
{
  enable = true;
  windows = {
    sshHost = "localhost";
    sshPort = 22555;
    sshUser = "administrator";
    sshIdentityFile = "/etc/win-automation/id_ed25519";
  };
  aloha = {
    serverUrl = "http://127.0.0.1:7887";
    clientUrl = "http://127.0.0.1:7888";
    serverStartCmd = "Start-Process -FilePath 'C:\\Aloha\\server.exe'";
    clientStartCmd = "Start-Process -FilePath 'C:\\Aloha\\client.exe'";
  };
  hatchet = {
    httpUrl = "http://127.0.0.1:8888";
    grpcAddress = "localhost:7077";
    healthUrl = "http://127.0.0.1:8733";
    tokenFile = "/run/secrets/hatchet-token";
    namespace = "production";
    workerConcurrency = 10;
  };
  playwright = {
    host = "127.0.0.1";
    port = 9323;
    wsPathFile = "/run/secrets/playwright-ws-path";
  };
  artifacts = {
    outDir = "/var/lib/win-automation/artifacts";
    retentionDays = 14;
  };
  worker = {
    enable = true;
    metrics = true;
    metricsInterval = "30s";
    metricsPath = "/var/log/win-automation/metrics.log";
  };
  supervisor = {
    enable = true;
    interval = "30s";
    debug = false;
  };
}
"""

# Every option the seed's module documents (minimal, full and sops examples).
SEED_OPTIONS = {
    "enable",
    "windows.sshHost",
    "windows.sshPort",
    "windows.sshUser",
    "windows.sshIdentityFile",
    "aloha.serverUrl",
    "aloha.clientUrl",
    "aloha.serverStartCmd",
    "aloha.clientStartCmd",
    "hatchet.httpUrl",
    "hatchet.grpcAddress",
    "hatchet.healthUrl",
    "hatchet.tokenFile",
    "hatchet.namespace",
    "hatchet.workerConcurrency",
    "playwright.host",
    "playwright.port",
    "playwright.wsPathFile",
    "artifacts.outDir",
    "artifacts.retentionDays",
    "worker.enable",
    "worker.metrics",
    "worker.metricsInterval",
    "worker.metricsPath",
    "supervisor.enable",
    "supervisor.interval",
    "supervisor.debug",
}

BOTH = "enable = true; worker.enable = true; supervisor.enable = true;"


@dataclass(frozen=True)
class Evaluated:
    """What the module produced: units, the config file, tmpfiles rules, users."""

    services: dict[str, Any]
    config_path: str | None
    config_text: str | None
    tmpfiles: list[str]
    users: list[str]
    packages: list[str]

    @property
    def config(self) -> dict[str, Any]:
        assert self.config_text is not None
        data: dict[str, Any] = json.loads(self.config_text)
        return data

    def unit(self, name: str) -> dict[str, Any]:
        svc: dict[str, Any] = self.services[name]
        return svc


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mock_dir(tmp_path_factory)


def eval_expr(mock: Path, cfg: str, lib: str | None = None) -> str:
    lib_arg = f"lib = import {lib}; " if lib else ""
    return f"""
      let
        pkgs = import {mock}/nixpkgs.nix {{
          system = "x86_64-linux"; {lib_arg}
          overlays = [ (import {ROOT}/nix/overlay.nix) ];
        }};
        c = import {mock}/nixos.nix {{
          inherit pkgs; lib = pkgs.lib;
          modules = [ {MODULE} ({{ pkgs, ... }}: {{ services.win-automation = {cfg}; }}) ];
        }};
        etc = c.environment.etc."win-automation/config.json".source or null;
      in {{
        services = c.systemd.services;
        config_path = if etc == null then null else etc.outPath;
        config_text = if etc == null then null else etc.text;
        tmpfiles = c.systemd.tmpfiles.rules;
        users = builtins.attrNames c.users.users;
        packages = map (p: p.outPath) c.environment.systemPackages;
      }}
    """


def evaluate(mock: Path, cfg: str, lib: str | None = None) -> Evaluated:
    out = run_nix(eval_expr(mock, cfg, lib), mock)
    assert out.returncode == 0, out.stderr
    return Evaluated(**json.loads(out.stdout))


def eval_error(mock: Path, cfg: str) -> str:
    out = run_nix(eval_expr(mock, cfg), mock)
    assert out.returncode != 0, f"evaluated, but should have failed: {out.stdout}"
    return out.stderr


def with_both(assignments: str) -> str:
    return "{ " + BOTH + " " + assignments + " }"


def declared_options(mock: Path) -> set[str]:
    expr = f"""
      let
        pkgs = import {mock}/nixpkgs.nix {{ system = "x86_64-linux"; }};
        m = import {MODULE} {{ inherit pkgs; lib = pkgs.lib; config = {{ }}; }};
        walk = p: v: if v ? _type then [ p ]
          else builtins.concatMap (n: walk (if p == "" then n else "${{p}}.${{n}}") v.${{n}})
            (builtins.attrNames v);
      in walk "" m.options.services.win-automation
    """
    out = run_nix(expr, mock)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


def unit_env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in svc["environment"].items()}


def credentials(svc: dict[str, Any]) -> dict[str, str]:
    return dict(c.split(":", 1) for c in svc["serviceConfig"].get("LoadCredential", []))


# -- every option changes the config file or a unit ------------------------------------------


def json_case(option: str, nix: str, key: str, value: object) -> Any:
    return pytest.param(f"{option} = {nix};", "json", key, value, id=option)


def unit_case(option: str, nix: str, where: str, expected: str) -> Any:
    return pytest.param(f"{option} = {nix};", where, None, expected, id=option)


OPTION_CASES = [
    json_case("windows.sshHost", '"vm.lan"', "windows.ssh_host", "vm.lan"),
    json_case("windows.sshPort", "2222", "windows.ssh_port", 2222),
    json_case("windows.sshUser", '"bob"', "windows.ssh_user", "bob"),
    unit_case("windows.sshIdentityFile", '"/etc/wa/id"', "credential", "ssh-identity:/etc/wa/id"),
    json_case(
        "windows.knownHosts", '"/etc/wa/known_hosts"', "windows.known_hosts", "/etc/wa/known_hosts"
    ),
    json_case(
        "aloha.serverUrl", '"http://10.0.0.5:7887/"', "aloha.server_url", "http://10.0.0.5:7887/"
    ),
    json_case(
        "aloha.clientUrl", '"http://10.0.0.5:7888"', "aloha.client_url", "http://10.0.0.5:7888"
    ),
    json_case(
        "aloha.serverStartCmd",
        '"Start-Process s.exe"',
        "aloha.server_start_cmd",
        "Start-Process s.exe",
    ),
    json_case(
        "aloha.clientStartCmd",
        '"Start-Process c.exe"',
        "aloha.client_start_cmd",
        "Start-Process c.exe",
    ),
    json_case(
        "aloha.clientLogPath",
        r'"C:\\Aloha\\client.log"',
        "aloha.client_log_path",
        r"C:\Aloha\client.log",
    ),
    json_case("hatchet.httpUrl", '"http://h:8888"', "hatchet.http_url", "http://h:8888"),
    json_case("hatchet.grpcAddress", '"h:7077"', "hatchet.grpc_address", "h:7077"),
    json_case("hatchet.healthUrl", '"http://h:8733"', "hatchet.health_url", "http://h:8733"),
    unit_case(
        "hatchet.tokenFile", '"/run/secrets/ht"', "credential", "hatchet-token:/run/secrets/ht"
    ),
    json_case("hatchet.namespace", '"production"', "hatchet.namespace", "production"),
    unit_case("hatchet.workerConcurrency", "4", "worker-exec", "worker --concurrency 4"),
    json_case("playwright.host", '"10.0.0.5"', "playwright.host", "10.0.0.5"),
    json_case("playwright.port", "9400", "playwright.port", 9400),
    unit_case(
        "playwright.wsPathFile",
        '"/run/secrets/ws"',
        "credential",
        "playwright-ws-path:/run/secrets/ws",
    ),
    json_case("artifacts.outDir", '"/srv/artifacts"', "artifacts.out_dir", "/srv/artifacts"),
    json_case("artifacts.retentionDays", "14", "artifacts.retention_days", 14),
    json_case("worker.metrics", "true", "worker.metrics", True),
    json_case("worker.metricsInterval", '"1m"', "worker.metrics_interval", "1m"),
    json_case(
        "worker.metricsPath",
        '"/var/log/win-automation/m.log"',
        "worker.metrics_path",
        "/var/log/win-automation/m.log",
    ),
    json_case("supervisor.interval", '"2m"', "supervisor.interval", "2m"),
    unit_case("supervisor.debug", "true", "supervisor-exec", "supervisor run --debug"),
    json_case("settings", '{ hatchet.job_timeout = "30m"; }', "hatchet.job_timeout", "30m"),
    unit_case(
        "package",
        '{ type = "derivation"; outPath = "/nix/store/other-pkg"; }',
        "both-exec",
        "/nix/store/other-pkg/bin/win-automation ",
    ),
    unit_case("worker.enable", "true", "units", "win-automation-worker"),
    unit_case("supervisor.enable", "true", "units", "win-automation-supervisor"),
]


def observed(ev: Evaluated, where: str, key: str | None) -> object:
    """What a case looks at; None when the config file leaves the key out."""
    match where:
        case "json":
            try:
                return lookup(ev.config, key or "")
            except KeyError:
                return None
        case "credential":
            return {f"{n}:{p}" for u in UNITS for n, p in credentials(ev.unit(u)).items()}
        case "worker-exec":
            return ev.unit("win-automation-worker")["serviceConfig"]["ExecStart"]
        case "supervisor-exec":
            return ev.unit("win-automation-supervisor")["serviceConfig"]["ExecStart"]
        case "both-exec":
            return " | ".join(ev.unit(u)["serviceConfig"]["ExecStart"] for u in UNITS)
        case "units":
            return set(ev.services)
    raise AssertionError(where)


def case_config(assignment: str, add: str | None = None) -> str:
    """The module config of a case: both units on, and the case's assignment (or ``add``).
    A unit's own enable is tested from a module with neither unit."""
    base = "enable = true;" if assignment.split(" = ")[0].endswith(".enable") else BOTH
    return "{ " + base + " " + (assignment if add is None else add) + " }"


def test_every_option_has_a_case(mock_dir: Path) -> None:
    declared = declared_options(mock_dir)
    cased = {p.id for p in OPTION_CASES}
    assert declared >= SEED_OPTIONS
    assert declared - {"enable"} == cased


@pytest.mark.parametrize(("assignment", "where", "key", "expected"), OPTION_CASES)
def test_option_changes_config_or_unit(
    mock_dir: Path, assignment: str, where: str, key: str | None, expected: object
) -> None:
    before = observed(evaluate(mock_dir, case_config(assignment, "")), where, key)
    after = observed(evaluate(mock_dir, case_config(assignment)), where, key)
    assert after != before
    if where == "json":
        assert after == expected
    else:
        assert isinstance(after, str | set)
        assert expected in after


def test_disabled_module_defines_nothing(mock_dir: Path) -> None:
    ev = evaluate(mock_dir, "{ worker.enable = true; supervisor.enable = true; }")
    assert ev.services == {}
    assert ev.config_path is None
    assert ev.users == []


def test_seed_minimal_config(mock_dir: Path) -> None:
    ev = evaluate(mock_dir, "{ enable = true; worker.enable = true; }")
    assert set(ev.services) == {"win-automation-worker"}
    assert ev.users == ["win-automation"]
    assert ev.packages == [MOCK_PACKAGE]
    svc = ev.unit("win-automation-worker")
    assert svc["environment"]["WIN_AUTOMATION_CONFIG"] == ev.config_path
    assert svc["serviceConfig"]["ExecStart"] == (
        f"{MOCK_PACKAGE}/bin/win-automation worker --concurrency 10"
    )
    # The defaults are the program's (settings.py) and the seed's.
    assert ev.config["windows"] == {
        "ssh_host": "localhost",
        "ssh_port": 22555,
        "ssh_user": "administrator",
    }
    assert ev.config["playwright"] == {"host": "127.0.0.1", "port": 9323}
    assert ev.config["artifacts"] == {
        "out_dir": "/var/lib/win-automation/artifacts",
        "retention_days": 7,
    }


def test_units_share_state_and_user(mock_dir: Path) -> None:
    ev = evaluate(mock_dir, SEED_FULL)
    for name in UNITS:
        sc = ev.unit(name)["serviceConfig"]
        assert sc["User"] == sc["Group"] == "win-automation"
        assert "DynamicUser" not in sc
        assert sc["StateDirectory"] == "win-automation"
        assert sc["LogsDirectory"] == "win-automation"
        assert sc["ProtectSystem"] == "strict"
        assert sc["Restart"] == "on-failure"
        assert sc["RestrictAddressFamilies"] == ["AF_INET", "AF_INET6", "AF_UNIX"]
        assert ev.unit(name)["environment"]["HOMEOPS_STATE_DIR"] == "/var/lib/win-automation"
    # Inside the state dir and the logs dir: nothing more to open up.
    assert ev.unit(UNITS[0])["serviceConfig"]["ReadWritePaths"] == []
    assert ev.tmpfiles == []


def test_paths_outside_the_state_dir_are_made_writable(mock_dir: Path) -> None:
    ev = evaluate(
        mock_dir,
        with_both('artifacts.outDir = "/srv/art"; worker.metricsPath = "/srv/metrics/m.log";'),
    )
    assert ev.unit(UNITS[0])["serviceConfig"]["ReadWritePaths"] == ["-/srv/art", "-/srv/metrics"]
    assert ev.tmpfiles == ["d /srv/art 0750 win-automation win-automation -"]


# -- secrets ------------------------------------------------------------------------------


def test_secrets_only_as_credentials(mock_dir: Path) -> None:
    ev = evaluate(mock_dir, SEED_FULL)
    secrets = {
        "hatchet-token": ("/run/secrets/hatchet-token", "WIN_AUTOMATION_HATCHET_TOKEN_FILE"),
        "playwright-ws-path": (
            "/run/secrets/playwright-ws-path",
            "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH_FILE",
        ),
        "ssh-identity": (
            "/etc/win-automation/id_ed25519",
            "WIN_AUTOMATION_WINDOWS_SSH_IDENTITY_FILE",
        ),
    }
    assert ev.config_text is not None
    for name in UNITS:
        svc = ev.unit(name)
        assert credentials(svc) == {n: src for n, (src, _env) in secrets.items()}
        for cred, (src, env) in secrets.items():
            assert svc["environment"][env] == f"%d/{cred}"
            assert src not in ev.config_text
            assert src not in json.dumps(svc["environment"])
    for key in ("token", "token_file", "ws_path", "ws_path_file", "ssh_identity_file"):
        assert f'"{key}"' not in ev.config_text


REFUSED = [
    pytest.param(
        'settings.hatchet.token = "jwt";', "must not hold secrets", id="token-in-settings"
    ),
    pytest.param(
        'settings.playwright.ws_path = "abc";', "must not hold secrets", id="ws-path-in-settings"
    ),
    pytest.param(
        'hatchet.tokenFile = "/nix/store/abc-token";', "outside the Nix store", id="token-in-store"
    ),
    pytest.param(
        "hatchet.tokenFile = ./token;", "is not of type", id="path-literal-would-be-copied"
    ),
    pytest.param(
        'windows.knownHosts = "/root/.ssh/known_hosts";', "ProtectHome", id="known-hosts-in-home"
    ),
    pytest.param('windows.sshPort = "22";', "is not of type", id="port-not-a-number"),
    pytest.param('worker.metricsInterval = "soon";', "is not of type", id="bad-duration"),
    pytest.param("hatchet.workerConcurrency = 0;", "is not of type", id="zero-concurrency"),
    pytest.param("hatchet.tokenFiel = null;", "does not exist", id="typo-in-option-name"),
]


@pytest.mark.parametrize(("assignment", "message"), REFUSED)
def test_refused(mock_dir: Path, assignment: str, message: str) -> None:
    assert message in eval_error(mock_dir, with_both(assignment))


# -- the rendered units: systemd-analyze -----------------------------------------------------


@pytest.fixture(scope="module")
def rendered(mock_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The seed's full configuration's units as files, their ExecStart pointing at a real
    win-automation (the mock store path does not exist here)."""
    ev = evaluate(mock_dir, SEED_FULL)
    out = tmp_path_factory.mktemp("units")
    store = out / "pkg"
    (store / "bin").mkdir(parents=True)
    (store / "bin" / "win-automation").symlink_to(WIN_AUTOMATION)
    files = {}
    for name in UNITS:
        path = out / f"{name}.service"
        path.write_text(render_unit(ev.unit(name)).replace(MOCK_PACKAGE, str(store)))
        files[name] = path
    return files


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(rendered: dict[str, Path], name: str) -> None:
    out = systemd_analyze("verify", str(rendered[name]))
    assert out.returncode == 0, out.stderr
    # verify only warns about unknown keys or bad values: any line about our file is a defect.
    assert str(rendered[name]) not in out.stderr, out.stderr


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_security(rendered: dict[str, Path], name: str) -> None:
    out = systemd_analyze("security", "--offline=true", "--no-pager", str(rendered[name]))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= 1.5, out.stdout


def test_rendered_unit_text(rendered: dict[str, Path]) -> None:
    text = rendered["win-automation-worker"].read_text()
    assert 'Environment="WIN_AUTOMATION_HATCHET_TOKEN_FILE=%d/hatchet-token"' in text
    assert "LoadCredential=hatchet-token:/run/secrets/hatchet-token" in text
    assert "RestrictAddressFamilies=AF_INET\nRestrictAddressFamilies=AF_INET6\n" in text
    assert "CapabilityBoundingSet=\n" in text
    assert "WantedBy=multi-user.target" in text


# -- the program reads what the module wrote -------------------------------------------------


def config_show(env: dict[str, str]) -> dict[str, Any]:
    if not WIN_AUTOMATION.exists():
        pytest.skip(f"{WIN_AUTOMATION} missing (pip install -e . in .venv)")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WIN_AUTOMATION", "HOMEOPS"))}
    out = subprocess.run(
        [str(WIN_AUTOMATION), "config", "show", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **env},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_program_loads_the_units_environment(mock_dir: Path, tmp_path: Path) -> None:
    """The worker's environment as systemd gives it: the config file, HOMEOPS_STATE_DIR, %d
    resolved to a credentials directory holding the LoadCredential files."""
    ev = evaluate(mock_dir, SEED_FULL)
    svc = ev.unit("win-automation-worker")
    creds = tmp_path / "credentials"
    creds.mkdir()
    secret_values = {"hatchet-token": "jwt-secret-value", "playwright-ws-path": "ws-secret-value"}
    for name in credentials(svc):
        (creds / name).write_text(secret_values.get(name, "-----BEGIN OPENSSH PRIVATE KEY-----\n"))
    config = tmp_path / "win-automation.json"
    assert ev.config_text is not None
    config.write_text(ev.config_text)

    env = {k: v.replace("%d", str(creds)) for k, v in unit_env(svc).items()}
    assert env["WIN_AUTOMATION_CONFIG"] == ev.config_path
    env["WIN_AUTOMATION_CONFIG"] = str(config)
    # The unit's StateDirectory and HOME do not exist here.
    env["HOMEOPS_STATE_DIR"] = str(tmp_path / "state")
    env["HOME"] = str(tmp_path)
    shown = config_show(env)
    settings = shown["settings"]

    assert shown["files"]["windows"] == str(config)
    file_src = f"file:{config}"
    for key, value in {
        "windows.windows.ssh_host": "localhost",
        "windows.aloha.server_start_cmd": r"Start-Process -FilePath 'C:\Aloha\server.exe'",
        "windows.hatchet.namespace": "production",
        "windows.hatchet.worker_concurrency": 10,
        "windows.artifacts.retention_days": 14.0,
        "windows.worker.metrics": True,
        "windows.worker.metrics_path": "/var/log/win-automation/metrics.log",
        "windows.supervisor.interval": "30s",
        "artifacts.root": "/var/lib/win-automation/artifacts",
        "metrics.enabled": True,
        "supervisor.interval": "30s",
    }.items():
        assert settings[key] == {"value": value, "source": file_src}, key
    assert settings["windows.hatchet.token"] == {
        "value": "***",
        "source": "env:WIN_AUTOMATION_HATCHET_TOKEN_FILE",
    }
    assert settings["windows.playwright.ws_path"]["source"] == (
        "env:WIN_AUTOMATION_PLAYWRIGHT_WS_PATH_FILE"
    )
    assert settings["windows.windows.ssh_identity_file"] == {
        "value": str(creds / "ssh-identity"),
        "source": "env:WIN_AUTOMATION_WINDOWS_SSH_IDENTITY_FILE",
    }
    text = json.dumps(shown)
    assert all(v not in text for v in secret_values.values())


def unit_runtime(ev: Evaluated, name: str, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """A unit's command and environment as systemd would start it, on this machine: its
    StateDirectory, LogsDirectory and credentials directory are temp dirs (systemd creates
    them; here nothing runs as PID 1), its ExecStart runs .venv's win-automation."""
    svc = ev.unit(name)
    dirs = {
        "/var/lib/win-automation": tmp_path / "state",
        "/var/log/win-automation": tmp_path / "logs",
    }
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    creds = tmp_path / "credentials"
    creds.mkdir(exist_ok=True)
    for cred in credentials(svc):
        (creds / cred).write_text(f"secret-{cred}")

    def place(text: str) -> str:
        for unit_path, here in dirs.items():
            text = text.replace(unit_path, str(here))
        return text.replace("%d", str(creds))

    assert ev.config_text is not None
    config = tmp_path / "win-automation.json"
    config.write_text(place(ev.config_text))
    env = {k: place(v) for k, v in unit_env(svc).items()}
    env["WIN_AUTOMATION_CONFIG"] = str(config)
    argv = svc["serviceConfig"]["ExecStart"].split()
    assert argv[0] == f"{MOCK_PACKAGE}/bin/win-automation"
    return [str(WIN_AUTOMATION), *argv[1:]], env


@pytest.mark.parametrize("name", UNITS)
def test_unit_command_runs_until_sigterm(mock_dir: Path, tmp_path: Path, name: str) -> None:
    """The units' command lines are ones the program accepts, and run until SIGTERM (exit 0)."""
    if not WIN_AUTOMATION.exists():
        pytest.skip(f"{WIN_AUTOMATION} missing (pip install -e . in .venv)")
    # Nothing answers on the VM's ports here: the supervisor's checks fail on loopback only.
    argv, env = unit_runtime(evaluate(mock_dir, SEED_FULL), name, tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WIN_AUTOMATION", "HOMEOPS"))}
    proc = subprocess.Popen(
        argv,
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "secret-" not in err
    if name == "win-automation-worker":
        # worker.metrics and metricsPath reached the worker: it wrote its lines on exit.
        assert "metric=jobs_enqueued_total " in (tmp_path / "logs" / "metrics.log").read_text()


# -- the mock agrees with nixpkgs' lib ----------------------------------------------------------


def test_same_result_with_real_nixpkgs_lib(mock_dir: Path) -> None:
    lib = real_lib()
    configs = [SEED_FULL, "{ enable = true; worker.enable = true; }"]
    configs += [case_config(str(p.values[0])) for p in OPTION_CASES]
    for cfg in configs:
        assert evaluate(mock_dir, cfg, lib=lib) == evaluate(mock_dir, cfg), cfg


@pytest.mark.parametrize("assignment", [str(p.values[0]) for p in REFUSED])
def test_real_nixpkgs_lib_refuses_too(mock_dir: Path, assignment: str) -> None:
    out = run_nix(eval_expr(mock_dir, with_both(assignment), real_lib()), mock_dir)
    assert out.returncode != 0, out.stdout
