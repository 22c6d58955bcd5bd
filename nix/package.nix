# The homeops Python application. Runtime dependencies mirror pyproject.toml's
# [project.dependencies]; tests/nix/test_flake.py evaluates this file and fails when the
# two lists drift apart.
# `mainProgram` only changes meta (not the derivation): pkgs.win-automation is the same build
# with the seed's program as what `nix run` and lib.getExe pick; both bins are installed.
{ lib, python3Packages, mainProgram ? "homeops" }:

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
    # Its major.minor must match playwright-core on the VM (pyproject pins 1.65.1); nixpkgs'
    # version is what `win-automation playwright install` should then install there.
    playwright
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
    inherit mainProgram;
    platforms = lib.platforms.linux;
  };
}
