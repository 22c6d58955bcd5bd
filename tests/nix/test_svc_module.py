"""The NixOS module services.homeops.svc (nix/modules/svc.nix, issue 8 item 8).

Evaluated with the mock module system of tests/nix/mock (``TEST_NIXPKGS_LIB`` also checks it
against nixpkgs' real ``lib``). What it renders is then used for real where this machine can:
services.json is loaded by homeops' own loader and settings model; the units are written as
NixOS writes them and linted by ``systemd-analyze verify`` and ``security``; the deploy
script copies, links and prunes in a temp dir; the network/volume and compose commands run
against the test dockerd (tests/fixtures/dockerd.py); the backup script runs with a recording
``svc``. Store paths of the mock packages (``/nix/store/mock-<pkg>/bin/<prog>``) are pointed
at this machine's programs for that (:func:`local_store`).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from homeops.services.settings import SvcSettings
from tests.fixtures.dockerd import DockerdHandle
from tests.nix.harness import (
    MOCK_STORE,
    ROOT,
    exposure,
    lookup,
    make_mock_dir,
    needs_nix,
    real_lib,
    render_timer,
    render_unit,
    run_nix,
    verify_problems,
)

MODULE = ROOT / "nix" / "modules" / "svc.nix"
VENV_BIN = ROOT / ".venv" / "bin"
SVC = VENV_BIN / "svc"
MOCK_PACKAGE = "/nix/store/mock-homeops"

pytestmark = needs_nix

# A typical setup: one repository on a backup disk, one service with its compose file
# deployed from the store and a backup of its data directory.
BASE = """{
  enable = true;
  repositories.local = {
    repository = "/mnt/backup/restic";
    passwordFile = "/run/secrets/restic-local";
  };
  services.web = {
    files."docker-compose.yml".source = "/srv/src/web/docker-compose.yml";
    backup = { enable = true; paths = [ "/var/lib/docker-services/web/data" ]; };
  };
}"""

# Seed 002's service metadata example, as this module takes it (the record's `name` may stay).
SEED_SERVICE = r"""{
  enable = true;
  repositories.local = {
    repository = "/mnt/backup/restic";
    passwordFile = "/run/secrets/restic-local";
  };
  repositories.remote = {
    repository = "sftp:backup@nas.lan:/srv/restic/homeserver";
    passwordFile = "/run/secrets/restic-remote";
  };
  services.service-name = {
    name = "service-name";
    compose = {
      enable = true;
      path = null;
      networks = [ "network-name" ];
      volumes = [ "volume-name" ];
    };
    files = {
      "prometheus_config.yml" = {
        source = "/srv/homeserver/services.d/monitoring/prometheus_config.yml";
        destination = null;
        executable = false;
      };
      "docker-compose.yml".source = "/srv/homeserver/services.d/monitoring/docker-compose.yml";
    };
    secretFiles = {
      ".env" = {
        template = ''vault-template-text'';
        destination = ".env";
        perms = "0400";
      };
      "deploy-key" = {
        template = ''{{ with secret "path" }}{{ .Data.data.key }}{{ end }}'';
        destination = "deploy-key";
        perms = "0400";
      };
    };
    backup = {
      enable = true;
      paths = [ "/path/to/backup" ];
      volumes = [ "docker-volume" ];
      tags = [ "service-tag" ];
      pre = "script before backup";
      post = "script after backup";
      exclude = [ "*.log" ];
      policy = { daily = 10; weekly = 4; monthly = 4; };
    };
  };
}"""


@dataclass(frozen=True)
class Evaluated:
    """What the module produced."""

    services: dict[str, Any]
    timers: dict[str, Any]
    config_path: str | None
    config_text: str | None
    tmpfiles: list[str]
    packages: list[dict[str, Any]]
    vault: dict[str, Any]
    docker: bool

    @property
    def config(self) -> dict[str, Any]:
        assert self.config_text is not None
        data: dict[str, Any] = json.loads(self.config_text)
        return data

    def unit(self, name: str) -> dict[str, Any]:
        svc: dict[str, Any] = self.services[name]
        return svc

    @property
    def units(self) -> set[str]:
        return {f"{n}.service" for n in self.services} | {f"{n}.timer" for n in self.timers}


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mock_dir(tmp_path_factory)


def eval_expr(mock: Path, configs: list[str], lib: str | None = None) -> str:
    """Each of ``configs`` is a module setting ``services.homeops.svc`` (merged as NixOS does)."""
    lib_arg = f"lib = import {lib}; " if lib else ""
    modules = " ".join(f"{{ services.homeops.svc = {c}; }}" for c in configs)
    return f"""
      let
        pkgs = import {mock}/nixpkgs.nix {{
          system = "x86_64-linux"; {lib_arg}
          overlays = [ (import {ROOT}/nix/overlay.nix) ];
        }};
        c = import {mock}/nixos.nix {{
          inherit pkgs; lib = pkgs.lib;
          modules = [ {MODULE} {modules} ];
        }};
        etc = c.environment.etc."svc/services.json".source or null;
      in {{
        services = c.systemd.services;
        timers = c.systemd.timers;
        config_path = if etc == null then null else etc.outPath;
        config_text = if etc == null then null else etc.text;
        tmpfiles = c.systemd.tmpfiles.rules;
        packages = map (p: {{ path = p.outPath; text = p.text or null;
          priority = p.meta.priority or null; }}) c.environment.systemPackages;
        vault = c.services.vault-agent.instances;
        docker = c.virtualisation.docker.enable;
      }}
    """


def evaluate(mock: Path, *configs: str, lib: str | None = None) -> Evaluated:
    out = run_nix(eval_expr(mock, list(configs), lib), mock)
    assert out.returncode == 0, out.stderr
    return Evaluated(**json.loads(out.stdout))


def eval_error(mock: Path, *configs: str) -> str:
    out = run_nix(eval_expr(mock, list(configs)), mock)
    assert out.returncode != 0, f"evaluated, but should have failed: {out.stdout[:500]}"
    return out.stderr


def declared_options(mock: Path) -> set[str]:
    """Every option of the module; a submodule's as ``services.*.backup.enable``, beside the
    option holding them (``services``)."""
    expr = f"""
      let
        pkgs = import {mock}/nixpkgs.nix {{ system = "x86_64-linux"; }};
        m = import {MODULE} {{ inherit pkgs; lib = pkgs.lib; config = {{ }}; }};
        join = p: n: if p == "" then n else "${{p}}.${{n}}";
        walk = p: v:
          if v ? _type then
            let elem = v.type.nestedTypes.elemType or null; in
            if elem != null && elem ? getSubOptions
            then [ p ] ++ walk (join p "*") (elem.getSubOptions [ ])
            else [ p ]
          else builtins.concatMap (n: walk (join p n) v.${{n}}) (builtins.attrNames v);
      in walk "" m.options.services.homeops.svc
    """
    out = run_nix(expr, mock)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


# -- every option changes services.json, a unit or a vault-agent template ----------------------


@dataclass(frozen=True)
class Case:
    """``assignment`` (beside ``context``, which both sides have) changes what ``where``
    looks at; a ``json:`` value must then equal ``expected``, anything else contain it."""

    option: str
    assignment: str
    where: str
    expected: object
    context: str = "{ }"


CASES = [
    Case(
        "package",
        '{ package = { type = "derivation"; outPath = "/nix/store/other-pkg"; }; }',
        "script:backup-web",
        "/nix/store/other-pkg/bin/svc backup",
    ),
    Case(
        "services",
        '{ services.db.compose.path = "/srv/db/docker-compose.yml"; }',
        "units",
        "docker-compose-db.service",
    ),
    Case("services.*.compose.enable", "{ services.web.compose.enable = false; }", "units", None),
    Case(
        "services.*.compose.path",
        '{ services.web.compose.path = "/srv/web/compose.yml"; }',
        "unit:docker-compose-web:serviceConfig.ExecStart",
        "-p web -f /srv/web/compose.yml up",
    ),
    Case(
        "services.*.compose.networks",
        '{ services.web.compose.networks = [ "proxy" ]; }',
        "unit:docker-compose-web:requires",
        "docker-network-proxy.service",
    ),
    Case(
        "services.*.compose.volumes",
        '{ services.web.compose.volumes = [ "web-db" ]; }',
        "unit:docker-compose-web:requires",
        "docker-volume-web-db.service",
    ),
    Case(
        "services.*.files",
        '{ services.web.files."app.yml".source = "/srv/src/web/app.yml"; }',
        "script:docker-services-deploy",
        "put app.yml /srv/src/web/app.yml 0644",
    ),
    Case(
        "services.*.files.*.source",
        '{ services.web.files."docker-compose.yml".source = lib.mkForce "/srv/src/web/o.yml"; }',
        "unit:docker-compose-web:restartTriggers",
        "/srv/src/web/o.yml",
    ),
    Case(
        "services.*.files.*.destination",
        '{ services.web.files."app.yml".destination = "config/app.yml"; }',
        "script:docker-services-deploy",
        "put config/app.yml /srv/src/web/app.yml",
        context='{ services.web.files."app.yml".source = "/srv/src/web/app.yml"; }',
    ),
    Case(
        "services.*.files.*.executable",
        '{ services.web.files."run.sh".executable = true; }',
        "script:docker-services-deploy",
        "put run.sh /srv/src/web/run.sh 0755",
        context='{ services.web.files."run.sh".source = "/srv/src/web/run.sh"; }',
    ),
    Case(
        "services.*.secretFiles",
        '{ services.web.secretFiles.".env".template = "A={{ .Data.data.a }}"; }',
        "vault",
        "/var/lib/secrets/web/.env",
    ),
    Case(
        "services.*.secretFiles.*.template",
        '{ services.web.secretFiles.".env".template = lib.mkForce "B={{ .Data.data.b }}"; }',
        "vault",
        "B={{ .Data.data.b }}",
        context='{ services.web.secretFiles.".env".template = "A={{ .Data.data.a }}"; }',
    ),
    Case(
        "services.*.secretFiles.*.destination",
        '{ services.web.secretFiles.".env".destination = "conf/app.env"; }',
        "script:docker-services-deploy",
        "link conf/app.env",
        context='{ services.web.secretFiles.".env".template = "A"; }',
    ),
    Case(
        "services.*.secretFiles.*.perms",
        '{ services.web.secretFiles.".env".perms = "0440"; }',
        "vault",
        '"perms": "0440"',
        context='{ services.web.secretFiles.".env".template = "A"; }',
    ),
    Case(
        "services.*.backup.enable",
        "{ services.web.backup.enable = lib.mkForce false; }",
        "units",
        None,
    ),
    Case(
        "services.*.backup.paths",
        '{ services.web.backup.paths = [ "/srv/web" ]; }',
        "json:services.web.backup.paths",
        ["/var/lib/docker-services/web/data", "/srv/web"],
    ),
    Case(
        "services.*.backup.volumes",
        '{ services.web.backup.volumes = [ "web_db" ]; }',
        "json:services.web.backup.volumes",
        ["web_db"],
    ),
    Case(
        "services.*.backup.tags",
        '{ services.web.backup.tags = [ "critical" ]; }',
        "json:services.web.backup.tags",
        ["critical"],
    ),
    Case(
        "services.*.backup.pre",
        '{ services.web.backup.pre = "echo pre"; }',
        "json:services.web.backup.pre",
        "echo pre",
    ),
    Case(
        "services.*.backup.post",
        '{ services.web.backup.post = "echo post"; }',
        "json:services.web.backup.post",
        "echo post",
    ),
    Case(
        "services.*.backup.exclude",
        '{ services.web.backup.exclude = [ "*.log" ]; }',
        "json:services.web.backup.exclude",
        ["*.log"],
    ),
    Case(
        "services.*.backup.policy.daily",
        "{ services.web.backup.policy.daily = 7; }",
        "json:services.web.backup.policy.daily",
        7,
    ),
    Case(
        "services.*.backup.policy.weekly",
        "{ services.web.backup.policy.weekly = 2; }",
        "json:services.web.backup.policy.weekly",
        2,
    ),
    Case(
        "services.*.backup.policy.monthly",
        "{ services.web.backup.policy.monthly = 12; }",
        "json:services.web.backup.policy.monthly",
        12,
    ),
    Case(
        "services.*.backup.stop",
        "{ services.web.backup.stop = true; }",
        "json:services.web.backup.stop",
        True,
    ),
    Case(
        "services.*.backup.staleAfter",
        '{ services.web.backup.staleAfter = "36h"; }',
        "json:services.web.backup.stale_after",
        "36h",
    ),
    Case(
        "repositories.local.repository",
        '{ repositories.local.repository = lib.mkForce "/srv/restic"; }',
        "json:repositories.local.repository",
        "/srv/restic",
    ),
    Case(
        "repositories.local.repositoryFile",
        "{ repositories.local = "
        '{ repository = lib.mkForce null; repositoryFile = "/run/secrets/repo"; }; }',
        "unit:backup-web:serviceConfig.LoadCredential",
        "restic-local-repository:/run/secrets/repo",
    ),
    Case(
        "repositories.local.passwordFile",
        '{ repositories.local.passwordFile = lib.mkForce "/run/secrets/other"; }',
        "unit:backup-web:serviceConfig.LoadCredential",
        "restic-local-password:/run/secrets/other",
    ),
    Case(
        "repositories.local.cacheDir",
        '{ repositories.local.cacheDir = "/var/cache/restic"; }',
        "json:repositories.local.cache_dir",
        "/var/cache/restic",
    ),
    Case(
        "repositories.local.options",
        '{ repositories.local.options = [ "sftp.connections=2" ]; }',
        "json:repositories.local.options",
        ["sftp.connections=2"],
    ),
    Case(
        "repositories.remote.options",
        '{ repositories.remote.options = [ "sftp.command=ssh -i /k b@nas.lan -s sftp" ]; }',
        "json:repositories.remote.options",
        ["sftp.command=ssh -i /k b@nas.lan -s sftp"],
        context='{ repositories.remote = { repository = "sftp:b@nas.lan:/r"; '
        'passwordFile = "/run/secrets/restic-remote"; }; }',
    ),
    Case(
        "repositories.remote.repository",
        '{ repositories.remote.repository = "sftp:b@nas.lan:/r"; }',
        "script:backup-web",
        "for repo in local remote; do",
        context='{ repositories.remote.passwordFile = "/run/secrets/restic-remote"; }',
    ),
    Case(
        "repositories.remote.repositoryFile",
        '{ repositories.remote.repositoryFile = "/run/secrets/remote-repo"; }',
        "unit:backup-web:environment",
        "SVC_REPOSITORIES_REMOTE_REPOSITORY_FILE",
        context='{ repositories.remote.passwordFile = "/run/secrets/restic-remote"; }',
    ),
    Case(
        "repositories.remote.passwordFile",
        '{ repositories.remote.passwordFile = "/run/secrets/restic-remote"; }',
        "json:repositories.remote.password_file",
        "/run/secrets/restic-remote",
        context='{ repositories.remote = { repository = "sftp:b@nas.lan:/r"; '
        'passwordFile = lib.mkDefault "/run/secrets/other"; }; }',
    ),
    Case(
        "repositories.remote.cacheDir",
        '{ repositories.remote.cacheDir = "/var/cache/remote"; }',
        "json:repositories.remote.cache_dir",
        "/var/cache/remote",
        context='{ repositories.remote = { repository = "sftp:b@nas.lan:/r"; '
        'passwordFile = "/run/secrets/restic-remote"; }; }',
    ),
    Case(
        "restore.stagingDir",
        '{ restore.stagingDir = "/srv/restore"; }',
        "json:restore.staging_dir",
        "/srv/restore",
    ),
    Case(
        "restore.asideDir",
        '{ restore.asideDir = "/srv/aside"; }',
        "json:restore.aside_dir",
        "/srv/aside",
    ),
    Case(
        "schedule",
        '{ schedule = "*-*-* 03:00:00"; }',
        "timer:backup-web:timerConfig.OnCalendar",
        "*-*-* 03:00:00",
    ),
    Case(
        "backupStopTimeout",
        '{ backupStopTimeout = "1h"; }',
        "unit:backup-web:serviceConfig.TimeoutStopSec",
        "1h",
    ),
    Case(
        "servicesRoot",
        '{ servicesRoot = "/srv/services"; }',
        "json:services_root",
        "/srv/services",
    ),
    Case(
        "secretsDir",
        '{ secretsDir = "/run/vault"; }',
        "vault",
        "/run/vault/web/.env",
        context='{ services.web.secretFiles.".env".template = "A"; }',
    ),
    Case(
        "secretsTimeout",
        "{ secretsTimeout = 30; }",
        "unit:docker-compose-web:preStart",
        'if [ "$waited" -ge 30 ]',
        context='{ services.web.secretFiles.".env".template = "A"; }',
    ),
    Case(
        "vaultAgentInstance",
        '{ vaultAgentInstance = "homeserver"; }',
        "unit:docker-compose-web:after",
        "vault-agent-homeserver.service",
        context='{ services.web.secretFiles.".env".template = "A"; }',
    ),
    Case(
        "settings",
        '{ settings.hook_timeout = "30m"; }',
        "json:hook_timeout",
        "30m",
    ),
]


def case_configs(case: Case, with_assignment: bool) -> list[str]:
    """The modules of one side of a case; ``lib`` reaches the snippets through a let."""
    configs = [BASE, case.context] + ([case.assignment] if with_assignment else [])
    return [f"(let lib = pkgs.lib; in {c})" for c in configs]


def observed(ev: Evaluated, where: str) -> object:
    """What a case looks at (None where it is absent)."""
    kind, _, rest = where.partition(":")
    try:
        match kind:
            case "json":
                return lookup(ev.config, rest)
            case "unit":
                name, _, path = rest.partition(":")
                return lookup(ev.unit(name), path)
            case "timer":
                name, _, path = rest.partition(":")
                return lookup(ev.timers[name], path)
            case "script":
                return ev.unit(rest)["script"]
            case "units":
                return sorted(ev.units)
            case "vault":
                return ev.vault
    except KeyError:
        return None
    raise AssertionError(where)


def test_every_option_has_a_case(mock_dir: Path) -> None:
    declared = declared_options(mock_dir)
    # A service's `name` only has to equal its attribute name (see REFUSED, name-mismatch).
    assert {c.option for c in CASES} == declared - {"enable", "services.*.name"}
    # The seed's metadata schema, all of it.
    assert {
        "services.*.compose.enable",
        "services.*.compose.path",
        "services.*.compose.networks",
        "services.*.compose.volumes",
        "services.*.files.*.source",
        "services.*.files.*.destination",
        "services.*.files.*.executable",
        "services.*.secretFiles.*.template",
        "services.*.secretFiles.*.destination",
        "services.*.secretFiles.*.perms",
        "services.*.backup.enable",
        "services.*.backup.paths",
        "services.*.backup.volumes",
        "services.*.backup.tags",
        "services.*.backup.pre",
        "services.*.backup.post",
        "services.*.backup.exclude",
        "services.*.backup.policy.daily",
        "services.*.backup.policy.weekly",
        "services.*.backup.policy.monthly",
    } <= declared


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.option)
def test_option_changes_what_is_rendered(mock_dir: Path, case: Case) -> None:
    before = observed(evaluate(mock_dir, *case_configs(case, False)), case.where)
    after = observed(evaluate(mock_dir, *case_configs(case, True)), case.where)
    assert after != before
    if case.where.startswith("json:"):
        assert after == case.expected
    elif case.expected is not None:
        shown = after if isinstance(after, str) else json.dumps(after)
        assert str(case.expected) in shown, shown


# -- services.json ---------------------------------------------------------------------------------


def test_disabled_module_defines_nothing(mock_dir: Path) -> None:
    ev = evaluate(mock_dir, BASE.replace("enable = true;", "enable = false;", 1))
    assert ev.services == {}
    assert ev.timers == {}
    assert ev.config_path is None
    assert ev.vault == {}
    assert ev.docker is False


def test_services_json_keys_and_store_paths(mock_dir: Path) -> None:
    ev = evaluate(mock_dir, BASE)
    assert ev.config == {
        "services_root": "/var/lib/docker-services",
        "repositories": {
            "local": {
                "repository": "/mnt/backup/restic",
                "password_file": "/run/secrets/restic-local",
                "cache_dir": "/var/cache/svc",
            }
        },
        "restore": {"staging_dir": "/var/lib/svc/restore", "aside_dir": "/var/lib/svc/aside"},
        # The seed's rule: never a bare program name.
        "tools": {
            "restic": "/nix/store/mock-restic/bin/restic",
            "docker": "/nix/store/mock-docker/bin/docker",
            "compose": "/nix/store/mock-docker-compose/bin/docker-compose",
            "systemctl": "/nix/store/mock-systemd/bin/systemctl",
            "journalctl": "/nix/store/mock-systemd/bin/journalctl",
            "bash": "/nix/store/mock-bash/bin/bash",
        },
        "services": {
            "web": {
                "name": "web",
                "compose": {"enable": True, "networks": [], "volumes": []},
                "backup": {
                    "enable": True,
                    "paths": ["/var/lib/docker-services/web/data"],
                    "volumes": [],
                    "tags": [],
                    "exclude": [],
                    "policy": {"daily": 10, "weekly": 4, "monthly": 4},
                    "stop": False,
                },
            }
        },
    }
    assert ev.docker is True
    assert ev.tmpfiles == ["d /var/lib/docker-services 0755 root root -"]


@pytest.mark.parametrize("config", [BASE, SEED_SERVICE], ids=["base", "seed"])
def test_settings_model_accepts_services_json(mock_dir: Path, config: str) -> None:
    ev = evaluate(mock_dir, config)
    settings = SvcSettings.model_validate(ev.config)
    for name, service in settings.services.items():
        assert service.name == name
        assert settings.compose_file(name) == Path(
            f"/var/lib/docker-services/{name}/docker-compose.yml"
        )


def test_seed_service(mock_dir: Path) -> None:
    ev = evaluate(mock_dir, SEED_SERVICE)
    assert ev.units == {
        "docker-services-deploy.service",
        "docker-network-network-name.service",
        "docker-volume-volume-name.service",
        "docker-compose-service-name.service",
        "backup-service-name.service",
        "backup-service-name.timer",
    }
    backup = ev.config["services"]["service-name"]["backup"]
    assert backup["pre"] == "script before backup"
    assert backup["exclude"] == ["*.log"]
    assert ev.vault == {
        "svc": {
            "settings": {
                "template": [
                    {
                        "contents": "vault-template-text",
                        "destination": "/var/lib/secrets/service-name/.env",
                        "perms": "0400",
                    },
                    {
                        "contents": '{{ with secret "path" }}{{ .Data.data.key }}{{ end }}',
                        "destination": "/var/lib/secrets/service-name/deploy-key",
                        "perms": "0400",
                    },
                ]
            }
        }
    }
    assert "d /var/lib/secrets/service-name 0700 root root -" in ev.tmpfiles
    compose = ev.unit("docker-compose-service-name")
    assert compose["after"] == [
        "docker.service",
        "docker-services-deploy.service",
        "docker-network-network-name.service",
        "docker-volume-volume-name.service",
        "vault-agent-svc.service",
    ]
    assert compose["requires"] == [
        "docker.service",
        "docker-network-network-name.service",
        "docker-volume-volume-name.service",
    ]
    file = "/var/lib/docker-services/service-name/docker-compose.yml"
    project = f"/nix/store/mock-docker-compose/bin/docker-compose -p service-name -f {file}"
    assert compose["serviceConfig"]["ExecStart"] == f"{project} up --remove-orphans"
    assert compose["serviceConfig"]["ExecStop"] == f"{project} stop"
    assert (
        "/var/lib/secrets/service-name/.env /var/lib/secrets/service-name/deploy-key"
        in (compose["preStart"])
    )
    deploy = ev.unit("docker-services-deploy")["script"]
    assert deploy.endswith(
        "\ndeploy service-name\n"
        "put docker-compose.yml /srv/homeserver/services.d/monitoring/docker-compose.yml 0644\n"
        "put prometheus_config.yml "
        "/srv/homeserver/services.d/monitoring/prometheus_config.yml 0644\n"
        "link .env\nlink deploy-key\nfinish\n\nprune service-name\n"
    )


def test_admin_svc_reads_the_units_ledger(mock_dir: Path, tmp_path: Path) -> None:
    """The `svc` on PATH is a wrapper (ahead of the package's own bin/svc) that points an
    administrator's `svc list` at the backup units' state dir."""
    ev = evaluate(mock_dir, BASE)
    package, wrapper = ev.packages
    assert package["path"] == MOCK_PACKAGE
    assert wrapper["priority"] == -10
    fake = tmp_path / "store" / "mock-homeops" / "bin"
    fake.mkdir(parents=True)
    (fake / "svc").write_text('#!/bin/sh\necho "$HOMEOPS_STATE_DIR $*"\n')
    (fake / "svc").chmod(0o755)
    script = tmp_path / "svc"
    script.write_text(wrapper["text"].replace(MOCK_PACKAGE, str(tmp_path / "store/mock-homeops")))
    env = {k: v for k, v in os.environ.items() if k != "HOMEOPS_STATE_DIR"}
    run = subprocess.run(
        ["bash", str(script), "list", "--json"],
        env=env,
        text=True,
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert run.stdout == "/var/lib/svc list --json\n"
    env["HOMEOPS_STATE_DIR"] = "/elsewhere"
    run = subprocess.run(
        ["bash", str(script), "list"],
        env=env,
        text=True,
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert run.stdout == "/elsewhere list\n"


def config_show(config: Path, env: Mapping[str, str]) -> dict[str, Any]:
    if not SVC.exists():
        pytest.skip(f"{SVC} missing (pip install -e . in .venv)")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SVC_", "HOMEOPS"))}
    out = subprocess.run(
        [str(SVC), "config", "show", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "SVC_CONFIG": str(config), **env},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_backup_units_environment_reaches_svc(mock_dir: Path, tmp_path: Path) -> None:
    """backup-<svc> as systemd starts it: SVC_CONFIG, HOMEOPS_STATE_DIR, and the password
    files as LoadCredential copies in %d, which svc takes over services.json's paths."""
    ev = evaluate(
        mock_dir,
        BASE,
        '{ repositories.remote = { repositoryFile = "/run/secrets/remote-repo"; '
        'passwordFile = "/run/secrets/restic-remote"; }; }',
    )
    unit = ev.unit("backup-web")
    creds = tmp_path / "credentials"
    creds.mkdir()
    sources = dict(c.split(":", 1) for c in unit["serviceConfig"]["LoadCredential"])
    assert sources == {
        "restic-local-password": "/run/secrets/restic-local",
        "restic-remote-password": "/run/secrets/restic-remote",
        "restic-remote-repository": "/run/secrets/remote-repo",
    }
    for name in sources:
        (creds / name).write_text(f"value of {name}\n")
    config = tmp_path / "services.json"
    assert ev.config_text is not None
    config.write_text(ev.config_text)
    env = {k: v.replace("%d", str(creds)) for k, v in unit["environment"].items()}
    assert env.pop("SVC_CONFIG") == ev.config_path
    assert env["HOMEOPS_STATE_DIR"] == "/var/lib/svc"
    env["HOMEOPS_STATE_DIR"] = str(tmp_path / "state")
    shown = config_show(config, env)["settings"]
    assert shown["services.repositories.local.password_file"] == {
        "value": str(creds / "restic-local-password"),
        "source": "env:SVC_REPOSITORIES_LOCAL_PASSWORD_FILE",
    }
    assert shown["services.repositories.remote.repository_file"] == {
        "value": str(creds / "restic-remote-repository"),
        "source": "env:SVC_REPOSITORIES_REMOTE_REPOSITORY_FILE",
    }
    assert shown["services.tools.restic"]["value"] == "/nix/store/mock-restic/bin/restic"
    assert shown["services.services"]["source"] == f"file:{config}"
    # services.json itself names the files an administrator's svc reads directly.
    assert ev.config["repositories"]["remote"] == {
        "repository_file": "/run/secrets/remote-repo",
        "password_file": "/run/secrets/restic-remote",
        "cache_dir": "/var/cache/svc",
    }


# -- refused -----------------------------------------------------------------------------------


REFUSED = [
    pytest.param('{ services."Web".compose.path = "/x.yml"; }', "a service name is", id="bad-name"),
    pytest.param('{ services.web.name = "other"; }', "not its attribute name", id="name-mismatch"),
    pytest.param(
        "{ services.web.backup.paths = lib.mkForce [ ]; }",
        "needs backup.paths or backup.volumes",
        id="backup-of-nothing",
    ),
    pytest.param(
        "{ repositories.local.repository = lib.mkForce null; }",
        "backup.enable needs a repository",
        id="backup-without-repository",
    ),
    pytest.param(
        "{ repositories.local.passwordFile = lib.mkForce null; }",
        "passwordFile is required",
        id="repository-without-password",
    ),
    pytest.param(
        '{ repositories.local.passwordFile = lib.mkForce "/nix/store/abc-pw"; }',
        "outside the Nix store",
        id="password-in-store",
    ),
    pytest.param(
        "{ repositories.local.passwordFile = lib.mkForce ./pw; }",
        "is not of type",
        id="password-path-literal-would-be-copied",
    ),
    pytest.param(
        '{ repositories.local.repositoryFile = "/run/secrets/repo"; }',
        "repository or repositoryFile, not both",
        id="repository-twice",
    ),
    pytest.param(
        "{ services.db.backup.enable = false; }",
        "no compose file",
        id="compose-without-file",
    ),
    pytest.param(
        '{ services.web.files.x = { source = "/a"; destination = "../etc/passwd"; }; }',
        "is not of type",
        id="destination-outside-the-service",
    ),
    pytest.param(
        '{ services.web.files.x = { source = "/a"; destination = "a b"; }; }',
        "is not of type",
        id="destination-with-a-blank",
    ),
    pytest.param(
        '{ services.web.secretFiles."docker-compose.yml".template = "x"; }',
        "share a destination",
        id="destination-twice",
    ),
    pytest.param(
        '{ services.web.files.".svc-deployed".source = "/a"; }',
        "the deployment's own manifest",
        id="manifest-name",
    ),
    pytest.param(
        '{ services.web.compose.networks = [ "-proxy" ]; }', "is not of type", id="network-name"
    ),
    pytest.param(
        '{ services.web.backup.tags = [ "a,b" ]; }', "is not of type", id="tag-with-comma"
    ),
    pytest.param(
        '{ services.web.backup.staleAfter = "soon"; }', "is not of type", id="bad-duration"
    ),
    pytest.param(
        '{ services.web.backup.paths = [ "data" ]; }', "is not of type", id="relative-path"
    ),
    pytest.param(
        '{ services.web.secretFiles.".env" = { template = "x"; perms = "u+r"; }; }',
        "is not of type",
        id="bad-perms",
    ),
    pytest.param("{ services.web.backup.enabel = true; }", "does not exist", id="typo"),
]


@pytest.mark.parametrize(("assignment", "message"), REFUSED)
def test_refused(mock_dir: Path, assignment: str, message: str) -> None:
    configs = [BASE, assignment]
    assert message in eval_error(mock_dir, *[f"(let lib = pkgs.lib; in {c})" for c in configs])


# -- the units as files: systemd-analyze ---------------------------------------------------------

# Programs of the mock packages, pointed at this machine's (or a stub where one is missing).
PROGRAMS = {
    "bash": {"bash": "/bin/bash"},
    "coreutils": {"sleep": "/bin/sleep"},
    "util-linux": {"flock": "/usr/bin/flock"},
    "docker": {"docker": "/usr/bin/docker"},
    "docker-compose": {"docker-compose": "/usr/bin/docker-compose"},
    "systemd": {"systemctl": "/usr/bin/systemctl", "journalctl": "/usr/bin/journalctl"},
    "restic": {"restic": "/usr/bin/restic"},
    "homeops": {"svc": str(SVC), "homeops": str(VENV_BIN / "homeops")},
}


def local_store(where: Path, overrides: Mapping[str, str] | None = None) -> Path:
    """``where/mock-<pkg>/bin/<prog>`` for every mock package: links to real programs, or to
    ``overrides[prog]``. coreutils' bin is /bin, whole (the deploy script's only PATH)."""
    for pkg, programs in PROGRAMS.items():
        bin_dir = where / f"mock-{pkg}" / "bin"
        if pkg == "coreutils":
            bin_dir.parent.mkdir(parents=True, exist_ok=True)
            bin_dir.symlink_to("/bin")
            continue
        bin_dir.mkdir(parents=True, exist_ok=True)
        for prog, real in programs.items():
            target = (overrides or {}).get(prog, real)
            if Path(target).exists():
                (bin_dir / prog).symlink_to(target)
            else:
                (bin_dir / prog).write_text("#!/bin/sh\nexit 127\n")
                (bin_dir / prog).chmod(0o755)
    return where


def localize(text: str, store: Path) -> str:
    return text.replace(MOCK_STORE, f"{store}/mock-")


# Exposure ceilings (systemd-analyze security --offline=true, systemd 252), as svc.nix
# documents them beside the units. backup-* with a network repository is the exception
# above 1.5: it needs the network for sftp:/rest: on top of root and CAP_DAC_READ_SEARCH.
EXPOSURE = {
    "docker-services-deploy.service": 0.7,
    "docker-network-network-name.service": 0.7,
    "docker-volume-volume-name.service": 0.7,
    "docker-compose-service-name.service": 0.8,
    "backup-service-name.service": 1.9,
}
EXPOSURE_LOCAL_BACKUP = 1.0


def write_units(ev: Evaluated, out: Path) -> dict[str, Path]:
    store = local_store(out / "store")
    files = {}
    for name, svc in ev.services.items():
        path = out / f"{name}.service"
        path.write_text(localize(render_unit(svc, out, name), store))
        files[path.name] = path
    for name, timer in ev.timers.items():
        path = out / f"{name}.timer"
        path.write_text(render_timer(timer))
        files[path.name] = path
    return files


@pytest.fixture(scope="module")
def seed_units(mock_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_units(evaluate(mock_dir, SEED_SERVICE), tmp_path_factory.mktemp("units"))


def test_units_pass_systemd_analyze_verify(seed_units: dict[str, Path]) -> None:
    assert set(seed_units) == {*EXPOSURE, "backup-service-name.timer"}
    problems = {name: verify_problems(path) for name, path in seed_units.items()}
    assert problems == dict.fromkeys(seed_units)


@pytest.mark.parametrize("name", sorted(EXPOSURE))
def test_security_exposure(seed_units: dict[str, Path], name: str) -> None:
    assert exposure(seed_units[name]) <= EXPOSURE[name]


def test_backup_without_network_repository_has_no_network(mock_dir: Path, tmp_path: Path) -> None:
    ev = evaluate(mock_dir, BASE)
    sc = ev.unit("backup-web")["serviceConfig"]
    assert sc["PrivateNetwork"] is True
    assert sc["RestrictAddressFamilies"] == ["AF_UNIX"]
    # Writable: the service's dir, its backup paths, the repository (besides state and cache).
    assert sc["ReadWritePaths"] == [
        "-/var/lib/docker-services/web",
        "-/var/lib/docker-services/web/data",
        "-/mnt/backup/restic",
    ]
    units = write_units(ev, tmp_path)
    assert verify_problems(units["backup-web.service"]) is None
    assert exposure(units["backup-web.service"]) <= EXPOSURE_LOCAL_BACKUP
    assert "network-online.target" not in ev.unit("backup-web")["after"]
    # restic's sftp: backend runs ssh from PATH.
    assert ev.unit("backup-web")["path"] == ["/nix/store/mock-openssh"]


def test_rendered_unit_text(seed_units: dict[str, Path]) -> None:
    backup = seed_units["backup-service-name.service"].read_text()
    assert 'Environment="SVC_REPOSITORIES_LOCAL_PASSWORD_FILE=%d/restic-local-password"' in backup
    assert "LoadCredential=restic-local-password:/run/secrets/restic-local\n" in backup
    assert "X-RestartIfChanged=false" in backup
    assert "CapabilityBoundingSet=CAP_DAC_READ_SEARCH\n" in backup
    assert "RestrictAddressFamilies=AF_INET6\n" in backup
    timer = seed_units["backup-service-name.timer"].read_text()
    assert "OnCalendar=daily\nPersistent=true\n" in timer
    assert "WantedBy=timers.target" in timer
    compose = seed_units["docker-compose-service-name.service"].read_text()
    assert "Type=simple\n" in compose
    assert "PrivateNetwork=true\n" in compose
    assert "RestrictAddressFamilies=AF_UNIX\n" in compose


# -- the deploy script, run -----------------------------------------------------------------------


@pytest.fixture
def deploy_dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(store sources, services root, secrets dir) with web's and db's source files."""
    src = tmp_path / "src"
    (src / "config").mkdir(parents=True)
    (src / "docker-compose.yml").write_text("services: {}\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "config" / "app.yml").write_text("a: 1\n")
    (src / "config" / "hook").write_text("#!/bin/sh\n")
    for path in src.rglob("*"):
        # As in the store: read-only, executables 0555.
        path.chmod(0o555 if path.is_dir() or path.name in ("run.sh", "hook") else 0o444)
    return src, tmp_path / "root", tmp_path / "secrets"


def deploy_config(src: Path, root: Path, secrets: Path, *, full: bool) -> str:
    web_extra = (
        f"""
        files."run.sh" = {{ source = "{src}/run.sh"; executable = true; }};
        secretFiles.".env".template = "A=1";
    """
        if full
        else ""
    )
    db = (
        f"""
      services.db.files."docker-compose.yml".source = "{src}/docker-compose.yml";
    """
        if full
        else ""
    )
    return f"""{{
      enable = true;
      servicesRoot = "{root}";
      secretsDir = "{secrets}";
      services.web = {{
        files."docker-compose.yml".source = "{src}/docker-compose.yml";
        files.config.source = "{src}/config";
        {web_extra}
      }};
      {db}
    }}"""


def run_deploy(mock: Path, config: str, store: Path) -> subprocess.CompletedProcess[str]:
    script = evaluate(mock, config).unit("docker-services-deploy")["script"]
    out = subprocess.run(
        ["/bin/bash", "-e", "-c", localize(script, store)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/nonexistent"},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.lstat().st_mode))


def test_deploy_copies_links_and_prunes(
    mock_dir: Path, tmp_path: Path, deploy_dirs: tuple[Path, Path, Path]
) -> None:
    src, root, secrets = deploy_dirs
    store = local_store(tmp_path / "store")
    (root / "manual").mkdir(parents=True)
    (root / "manual" / "data").write_text("not ours")

    run_deploy(mock_dir, deploy_config(src, root, secrets, full=True), store)
    web = root / "web"
    assert (web / "docker-compose.yml").read_text() == "services: {}\n"
    assert mode(web / "docker-compose.yml") == "0o644"
    assert mode(web / "run.sh") == "0o755"
    assert mode(web / "config") == "0o755"
    assert mode(web / "config" / "app.yml") == "0o644"
    assert mode(web / "config" / "hook") == "0o755"
    assert os.readlink(web / ".env") == f"{secrets}/web/.env"
    assert sorted((web / ".svc-deployed").read_text().splitlines()) == [
        "file config",
        "file docker-compose.yml",
        "file run.sh",
        "secret .env",
    ]
    assert (root / "db" / "docker-compose.yml").exists()
    assert not list(root.rglob("*.svc-new"))

    # The services write data beside what was deployed; vault-agent renders the secret.
    (web / "data").mkdir()
    (web / "data" / "db.sqlite").write_text("live")
    (secrets / "web").mkdir(parents=True)
    (secrets / "web" / ".env").write_text("A=1\n")
    (root / "gone").mkdir()
    (root / "gone" / ".svc-deployed").write_text("file docker-compose.yml\n")
    (root / "gone" / "docker-compose.yml").write_text("x")
    (root / "gone" / "volume").mkdir()

    # A second run with run.sh, the secret and service db gone.
    out = run_deploy(mock_dir, deploy_config(src, root, secrets, full=False), store)
    assert not (web / "run.sh").exists()
    assert not (web / ".env").is_symlink()
    assert not (secrets / "web" / ".env").exists()
    assert (web / "data" / "db.sqlite").read_text() == "live"
    assert (web / "config" / "app.yml").exists()
    assert not (root / "db").exists()
    assert "db: no longer defined; removed" in out.stdout
    # A stale directory that still holds data loses only what was deployed into it.
    assert sorted(p.name for p in (root / "gone").iterdir()) == ["volume"]
    assert f"gone: no longer defined; kept {root}/gone" in out.stdout
    assert (root / "manual" / "data").read_text() == "not ours"
    assert sorted((web / ".svc-deployed").read_text().splitlines()) == [
        "file config",
        "file docker-compose.yml",
    ]

    # The same configuration again changes nothing.
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    run_deploy(mock_dir, deploy_config(src, root, secrets, full=False), store)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_deploy_replaces_a_changed_file(
    mock_dir: Path, tmp_path: Path, deploy_dirs: tuple[Path, Path, Path]
) -> None:
    src, root, secrets = deploy_dirs
    store = local_store(tmp_path / "store")
    config = deploy_config(src, root, secrets, full=False)
    run_deploy(mock_dir, config, store)
    new = tmp_path / "new"
    new.mkdir()
    (new / "docker-compose.yml").write_text("services: {a: {}}\n")
    (new / "config").mkdir()
    (new / "config" / "other.yml").write_text("b: 2\n")
    run_deploy(mock_dir, config.replace(f'"{src}/', f'"{new}/'), store)
    assert (root / "web" / "docker-compose.yml").read_text() == "services: {a: {}}\n"
    assert sorted(p.name for p in (root / "web" / "config").iterdir()) == ["other.yml"]


def test_deploy_script_passes_bash_n() -> None:
    out = subprocess.run(
        ["bash", "-n", str(MODULE.parent / "svc-deploy.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr


# -- wait for secrets, backup script ---------------------------------------------------------------


def test_compose_waits_for_rendered_secrets(mock_dir: Path, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    ev = evaluate(
        mock_dir,
        BASE,
        f'{{ secretsDir = "{secrets}"; secretsTimeout = 1; '
        'services.web.secretFiles.".env".template = "A"; }',
    )
    script = localize(ev.unit("docker-compose-web")["preStart"], local_store(tmp_path / "store"))
    missing = subprocess.run(
        ["bash", "-e", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert missing.returncode == 1
    assert f"{secrets}/web/.env: not rendered by vault-agent-svc within 1s" in missing.stderr
    (secrets / "web").mkdir(parents=True)
    (secrets / "web" / ".env").write_text("A=1\n")
    present = subprocess.run(
        ["bash", "-e", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert present.returncode == 0, present.stderr


RECORDING_SVC = """#!/bin/sh
# Records its call, sleeps, and exits with $FAKE_EXIT_<repo> (default 0).
echo "start $* $(date +%s.%N)" >> "$FAKE_LOG"
sleep "${FAKE_SLEEP:-0}"
echo "end $* $(date +%s.%N)" >> "$FAKE_LOG"
eval "exit \\${FAKE_EXIT_$2:-0}"
"""


@pytest.fixture
def backup_runner(mock_dir: Path, tmp_path: Path) -> Callable[..., subprocess.Popen[str]]:
    """Starts backup-<svc>'s script with a recording svc; returns the process."""
    fake = tmp_path / "fake-svc"
    fake.write_text(RECORDING_SVC)
    fake.chmod(0o755)
    store = local_store(tmp_path / "store", {"svc": str(fake)})
    ev = evaluate(
        mock_dir,
        BASE,
        '{ repositories.remote = { repository = "sftp:b@nas.lan:/r"; '
        'passwordFile = "/run/secrets/restic-remote"; }; '
        'services.db = { compose.path = "/srv/db.yml"; backup = { enable = true; '
        'paths = [ "/srv/db" ]; }; }; }',
    )
    state = tmp_path / "state"
    state.mkdir()

    def start(service: str, **env: str) -> subprocess.Popen[str]:
        script = localize(ev.unit(f"backup-{service}")["script"], store)
        script = script.replace("/var/lib/svc/", f"{state}/")
        return subprocess.Popen(
            ["bash", "-e", "-c", script],
            env={**os.environ, "FAKE_LOG": str(tmp_path / "calls"), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start


def calls(path: Path) -> list[tuple[str, str, float]]:
    out = []
    for line in path.read_text().splitlines():
        what, *args, at = line.split()
        out.append((what, " ".join(args), float(at)))
    return out


def test_backup_runs_remote_even_when_local_fails(
    backup_runner: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    proc = backup_runner("web", FAKE_EXIT_local="3")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert "svc backup local web failed (exit 3)" in err
    assert [(w, a) for w, a, _ in calls(tmp_path / "calls")] == [
        ("start", "backup local web"),
        ("end", "backup local web"),
        ("start", "backup remote web"),
        ("end", "backup remote web"),
    ]


def test_backups_of_two_services_run_one_after_the_other(
    backup_runner: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    """The timers fire together; the lock makes the second wait for the first."""
    first = backup_runner("web", FAKE_SLEEP="0.4")
    log = tmp_path / "calls"
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text()):
        assert time.monotonic() < deadline, "the first backup did not start"
        time.sleep(0.02)
    second = backup_runner("db", FAKE_SLEEP="0.4")
    for proc in (first, second):
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    rows = calls(tmp_path / "calls")
    assert [a for w, a, _ in rows if w == "start"] == [
        "backup local web",
        "backup remote web",
        "backup local db",
        "backup remote db",
    ]
    web_end = max(t for w, a, t in rows if w == "end" and a.endswith("web"))
    db_start = min(t for w, a, t in rows if w == "start" and a.endswith("db"))
    assert db_start >= web_end


# -- networks, volumes and the compose unit on a real engine ---------------------------------------


@pytest.fixture
def engine_store(tmp_path: Path, dockerd: DockerdHandle) -> Path:
    return local_store(tmp_path / "store", {"docker": dockerd.docker_bin})


@pytest.mark.parametrize("kind", ["network", "volume"])
def test_network_and_volume_units_are_idempotent(
    mock_dir: Path, dockerd: DockerdHandle, engine_store: Path, kind: str
) -> None:
    name = f"svc-test-{uuid.uuid4().hex[:8]}"
    ev = evaluate(mock_dir, BASE, f'{{ services.web.compose.{kind}s = [ "{name}" ]; }}')
    script = localize(ev.unit(f"docker-{kind}-{name}")["script"], engine_store)
    try:
        outputs = []
        for _ in range(2):
            out = subprocess.run(
                ["bash", "-e", "-c", script],
                capture_output=True,
                text=True,
                timeout=60,
                env=dockerd.env(),
                check=False,
            )
            assert out.returncode == 0, out.stderr
            outputs.append(out.stdout)
        assert dockerd.docker(kind, "inspect", name, check=False).returncode == 0
        assert outputs[1] == f"docker {kind} {name} exists\n"
    finally:
        dockerd.docker(kind, "rm", name, check=False)


def test_compose_unit_runs_the_project_in_the_foreground(
    mock_dir: Path, dockerd: DockerdHandle, engine_store: Path, tmp_path: Path
) -> None:
    """ExecStart keeps running while the project runs; ExecStop stops the containers (kept,
    with their volumes), which ends it; ExecStart starts the same containers again."""
    name = f"t{uuid.uuid4().hex[:10]}"
    root = tmp_path / "root"
    dockerd.write_compose_project(root / name)
    ev = evaluate(
        mock_dir,
        f'{{ enable = true; servicesRoot = "{root}"; '
        f'services.{name}.files."docker-compose.yml".source = "/unused"; }}',
    )
    sc = ev.unit(f"docker-compose-{name}")["serviceConfig"]
    start = localize(sc["ExecStart"], engine_store).split()
    stop = localize(sc["ExecStop"], engine_store).split()
    try:
        first = run_until_stopped(dockerd, name, start, stop)
        # Started again: the same container (and its anonymous volumes), not a new one.
        assert run_until_stopped(dockerd, name, start, stop) == first
    finally:
        dockerd.compose(root / name, "down", "--volumes", project=name, check=False)


def run_until_stopped(
    dockerd: DockerdHandle, project: str, start: list[str], stop: list[str]
) -> str:
    """Run ExecStart until the project's container runs, then ExecStop; the container's id."""
    with subprocess.Popen(
        start, env=dockerd.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as up:
        try:
            deadline = time.monotonic() + 60
            while [c["State"] for c in dockerd.containers(project)] != ["running"]:
                assert up.poll() is None, up.communicate()[0]
                assert time.monotonic() < deadline, "the project did not come up"
                time.sleep(0.2)
            time.sleep(0.5)
            assert up.poll() is None, "compose up returned while the project runs"
            down = subprocess.run(
                stop, env=dockerd.env(), capture_output=True, text=True, timeout=120, check=False
            )
            assert down.returncode == 0, down.stderr
            output = up.communicate(timeout=60)[0]
            assert up.returncode == 0, output
        finally:
            if up.poll() is None:
                up.kill()
                up.communicate()
    (container,) = dockerd.containers(project)
    assert container["State"] == "exited"
    return container["ID"]


# -- examples/services.json and docs/services.md ----------------------------------------------

EXAMPLE = ROOT / "examples" / "services.json"
DOCS = ROOT / "docs" / "services.md"


def key_paths(data: object, prefix: str = "") -> set[str]:
    """Dotted paths of every key of nested objects; a service's or repository's name is
    ``*``."""
    if not isinstance(data, dict):
        return set()
    out = set()
    for key, value in data.items():
        here = f"{prefix}.{key}" if prefix else key
        if prefix in ("services", "repositories"):
            here = f"{prefix}.*"
        out |= {here} | key_paths(value, here)
    return out


def test_example_loads_and_has_every_key_the_module_writes(mock_dir: Path, tmp_path: Path) -> None:
    shown = config_show(EXAMPLE, {"HOMEOPS_STATE_DIR": str(tmp_path / "state")})
    assert shown["settings"]["services.services"]["source"] == f"file:{EXAMPLE}"
    example = json.loads(EXAMPLE.read_text())
    SvcSettings.model_validate(example)
    written = set()
    for configs in ([BASE], [SEED_SERVICE], *(case_configs(c, True) for c in CASES)):
        written |= key_paths(evaluate(mock_dir, *configs).config)
    written -= {"hook_timeout"}  # from `settings`: the example has it anyway
    assert written <= key_paths(example)


def test_docs_name_every_key_and_variable() -> None:
    from homeops.core.config import leaves
    from homeops.services.settings import SPEC, Backup, Compose, Policy

    text = DOCS.read_text()
    for dotted, env, _secret in leaves(SPEC):
        # The remote repository's variables are documented as "remote alike".
        assert f"`{env[0].replace('_REMOTE_', '_LOCAL_')}`" in text, env[0]
        assert dotted.rsplit(".", 1)[-1] in text, dotted
    for model, prefix in ((Compose, "compose"), (Backup, "backup"), (Policy, "backup.policy")):
        for field in model.model_fields:
            assert f"{prefix}.{field}" in text or f".{field}`" in text, f"{prefix}.{field}"


# -- the mock agrees with nixpkgs' lib -----------------------------------------------------------


def test_same_result_with_real_nixpkgs_lib(mock_dir: Path) -> None:
    lib = real_lib()
    sides = [[BASE], [SEED_SERVICE]]
    sides += [case_configs(c, True) for c in CASES] + [case_configs(c, False) for c in CASES]
    for configs in sides:
        assert evaluate(mock_dir, *configs, lib=lib) == evaluate(mock_dir, *configs), configs


@pytest.mark.parametrize("assignment", [str(p.values[0]) for p in REFUSED])
def test_real_nixpkgs_lib_refuses_too(mock_dir: Path, assignment: str) -> None:
    configs = [f"(let lib = pkgs.lib; in {c})" for c in (BASE, assignment)]
    out = run_nix(eval_expr(mock_dir, configs, real_lib()), mock_dir)
    assert out.returncode != 0, out.stdout


def test_flake_exports_the_module(mock_dir: Path) -> None:
    expr = (
        f"let flake = import {ROOT}/flake.nix; "
        f"nixpkgs = {{ outPath = {mock_dir}/nixpkgs.nix; lib = import {mock_dir}/lib.nix; }}; "
        "self = flake.outputs { inherit self nixpkgs; }; "
        "in builtins.attrNames self.nixosModules"
    )
    out = run_nix(expr, mock_dir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["default", "svc", "win-automation"]
