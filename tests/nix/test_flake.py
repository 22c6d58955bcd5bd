"""Nix files: every one parses, and the flake's outputs evaluate against a mock nixpkgs.

Debian's nix-bin runs here without nixpkgs, so the mock in tests/nix/mock applies the
overlay like nixpkgs would; the package's dependency list must match pyproject.toml.
"""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NIX_FILES = sorted(
    p
    for p in ROOT.rglob("*.nix")
    if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
)

pytestmark = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None,
    reason="nix-instantiate not installed (apt-get install nix-bin)",
)


def nix_eval(expr: str, tmp_path: Path) -> object:
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode", "-E", expr],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def pyproject_dependencies() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [
        re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower()
        for dep in data["project"]["dependencies"]
    ]


def test_there_are_nix_files():
    names = {p.relative_to(ROOT).as_posix() for p in NIX_FILES}
    assert {"flake.nix", "nix/package.nix", "nix/overlay.nix", "nix/devshell.nix"} <= names


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_parses(path):
    out = subprocess.run(
        ["nix-instantiate", "--parse", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr


@pytest.fixture
def mock_nixpkgs(tmp_path):
    mock = tmp_path / "mock"
    shutil.copytree(Path(__file__).parent / "mock", mock)
    names = [
        *pyproject_dependencies(),
        "flit-core",
        "pytest",
        "pytest-asyncio",
        "pytest-timeout",
        "mypy",
    ]
    (mock / "python-names.json").write_text(json.dumps(names))
    return mock


def flake_outputs(mock: Path) -> str:
    return (
        f"let flake = import {ROOT}/flake.nix; "
        f"nixpkgs = {{ outPath = {mock}/nixpkgs.nix; lib = import {mock}/lib.nix; }}; "
        "self = flake.outputs { inherit self nixpkgs; }; in self"
    )


def test_package_dependencies_match_pyproject(mock_nixpkgs, tmp_path):
    deps = nix_eval(
        f"({flake_outputs(mock_nixpkgs)}).packages.x86_64-linux.default.dependencies", tmp_path
    )
    assert sorted(d.removeprefix("python3Packages.") for d in deps) == sorted(
        pyproject_dependencies()
    )


def test_package_metadata(mock_nixpkgs, tmp_path):
    pkg = nix_eval(
        f"let p = ({flake_outputs(mock_nixpkgs)}).packages.x86_64-linux.default; "
        "in { inherit (p) pname version pyproject; main = p.meta.mainProgram; }",
        tmp_path,
    )
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert pkg == {"pname": "homeops", "version": version, "pyproject": True, "main": "homeops"}


def test_apps_devshell_and_overlay(mock_nixpkgs, tmp_path):
    got = nix_eval(
        f"let o = {flake_outputs(mock_nixpkgs)}; in {{ "
        "app = o.apps.aarch64-linux.default; "
        "shell = o.devShells.x86_64-linux.default ? shell; "
        "systems = builtins.attrNames o.packages; "
        "overlay = builtins.isFunction o.overlays.default; }",
        tmp_path,
    )
    assert got["app"] == {"type": "app", "program": "/nix/store/mock-homeops/bin/homeops"}
    assert got["shell"] is True
    assert got["systems"] == ["aarch64-linux", "x86_64-linux"]
    assert got["overlay"] is True
