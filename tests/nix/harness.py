"""What the NixOS module tests share: nix-instantiate over the mock in tests/nix/mock, unit
files written the way NixOS writes them, and systemd-analyze on those files.

Evaluation: there is no nixpkgs here, so modules are evaluated against the mock package set
and module system (``TEST_NIXPKGS_LIB``, a nixpkgs ``lib`` directory, swaps in the real
``lib.evalModules`` and types). Rendering follows nixos/lib/systemd-unit-options.nix and
systemd-lib.nix for the keys homeops' modules use: ``after``/``wants``/``requires`` and
``wantedBy`` as space-separated lists, ``environment`` (and ``path`` as its PATH) as quoted
``Environment=`` lines, ``restartTriggers``/``restartIfChanged`` as ``X-`` keys, a list in
``serviceConfig`` as one line per item, and ``script``/``preStart`` as ExecStart/ExecStartPre
scripts run by bash with ``set -e`` (NixOS's makeJobScript).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MOCK = Path(__file__).parent / "mock"
MOCK_STORE = "/nix/store/mock-"

needs_nix = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None,
    reason="nix-instantiate not installed (apt-get install nix-bin)",
)


def python_names() -> list[str]:
    """The Python dependencies the mock's python3Packages must offer (pyproject's)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = [
        re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() for d in data["project"]["dependencies"]
    ]
    return [*deps, "flit-core"]


def make_mock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of tests/nix/mock with the dependency list the mock package set reads."""
    mock = tmp_path_factory.mktemp("nix") / "mock"
    shutil.copytree(MOCK, mock)
    (mock / "python-names.json").write_text(json.dumps(python_names()))
    return mock


def run_nix(expr: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``nix-instantiate --eval --strict --json -E expr`` (read-only: nothing is built)."""
    return subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def real_lib() -> str:
    """nixpkgs' lib directory from TEST_NIXPKGS_LIB, or a skip."""
    real = os.environ.get("TEST_NIXPKGS_LIB")
    if not real:
        pytest.skip("TEST_NIXPKGS_LIB not set (a nixpkgs lib/ directory, e.g. from nixpkgs.lib)")
    return real


def lookup(data: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path of nested mappings (KeyError when absent)."""
    here: Any = data
    for part in dotted.split("."):
        here = here[part]
    return here


# -- rendering, as NixOS writes unit files ---------------------------------------------------


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _section(name: str, items: Mapping[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    for key, value in items.items():
        values = value if isinstance(value, list) else [value]
        lines.extend(f"{key}={_value(v)}" for v in values)
    return lines


def job_script(text: str, bash: str = "/bin/bash") -> str:
    """A ``script``/``preStart`` as NixOS's makeJobScript writes it (bash, ``set -e``)."""
    return f"#!{bash}\nset -e\n{text}"


def _unit_section(unit: Mapping[str, Any]) -> dict[str, Any]:
    section: dict[str, Any] = {"Description": unit["description"]}
    for key, nix in (("After", "after"), ("Wants", "wants"), ("Requires", "requires")):
        if unit.get(nix):
            section[key] = " ".join(unit[nix])
    if unit.get("restartTriggers"):
        section["X-Restart-Triggers"] = " ".join(unit["restartTriggers"])
    if unit.get("restartIfChanged") is False:
        section["X-RestartIfChanged"] = False
    return section


def render_unit(svc: Mapping[str, Any], scripts: Path | None = None, name: str = "") -> str:
    """The unit file NixOS writes for a systemd.services entry. ``script`` and ``preStart``
    are written under ``scripts`` as ``<name>-start`` / ``<name>-pre-start``."""
    environment = dict(svc.get("environment", {}))
    if svc.get("path"):
        # NixOS also appends its default packages (coreutils, findutils, grep, sed, systemd).
        bins = [f"{p}/bin" for p in svc["path"]] + [f"{p}/sbin" for p in svc["path"]]
        environment["PATH"] = ":".join(bins)
    service: dict[str, Any] = {
        "Environment": [f'"{k}={v}"' for k, v in sorted(environment.items())]
    }
    service.update(svc["serviceConfig"])
    for nix, key, suffix in (
        ("preStart", "ExecStartPre", "pre-start"),
        ("script", "ExecStart", "start"),
    ):
        if svc.get(nix):
            assert scripts is not None, f"{name}: a {nix} needs a scripts directory"
            path = scripts / f"{name}-{suffix}"
            path.write_text(job_script(svc[nix]))
            path.chmod(0o755)
            service[key] = str(path)
    lines = [*_section("Unit", _unit_section(svc)), "", *_section("Service", service), ""]
    if svc.get("wantedBy"):
        lines += _section("Install", {"WantedBy": " ".join(svc["wantedBy"])})
    return "\n".join(lines) + "\n"


def render_timer(timer: Mapping[str, Any]) -> str:
    """The unit file NixOS writes for a systemd.timers entry."""
    lines = [*_section("Unit", _unit_section(timer)), "", *_section("Timer", timer["timerConfig"])]
    if timer.get("wantedBy"):
        lines += ["", *_section("Install", {"WantedBy": " ".join(timer["wantedBy"])})]
    return "\n".join(lines) + "\n"


# -- systemd-analyze -------------------------------------------------------------------------


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze (a skip where it is not installed)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian: systemd)")
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


def verify_problems(unit_file: Path) -> str | None:
    """What ``systemd-analyze verify`` says about ``unit_file`` (None: nothing)."""
    out = systemd_analyze("verify", str(unit_file))
    # verify only warns about unknown keys or bad values: any line about our file is a defect.
    if out.returncode != 0 or str(unit_file) in out.stderr:
        return out.stderr or f"exit {out.returncode}"
    return None


def exposure(unit_file: Path) -> float:
    """``systemd-analyze security --offline=true``'s overall exposure of a unit file."""
    out = systemd_analyze("security", "--offline=true", "--no-pager", str(unit_file))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert found, out.stdout + out.stderr
    return float(found.group(1))
