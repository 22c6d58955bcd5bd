# The homeops Python application. Runtime dependencies mirror pyproject.toml's
# [project.dependencies]; tests/core/test_nix.py evaluates this file and fails when the
# two lists drift apart.
{ lib, python3Packages }:

python3Packages.buildPythonApplication {
  pname = "homeops";
  version = "0.1.0";
  pyproject = true;

  src = lib.cleanSource ../.;

  build-system = [ python3Packages.flit-core ];

  dependencies = with python3Packages; [
    pydantic
    typer
    rich
    asyncssh
    httpx
    tenacity
  ];

  # nixpkgs moves these at its own pace; the lower bounds in pyproject.toml are what matters.
  pythonRelaxDeps = true;

  # The integration tests need sshd, restic and network namespaces: they run in CI, not in
  # the sandbox. Importing the package and printing the version is checked here.
  doCheck = false;
  pythonImportsCheck = [ "homeops" "homeops.cli" ];

  meta = {
    description = "Runs a NixOS homelab end to end: fleet deploys, builds and cache, backups, a Windows VM";
    license = lib.licenses.mit;
    mainProgram = "homeops";
    platforms = lib.platforms.linux;
  };
}
