# `nix develop`: the tools the test suite drives for real, plus the Python toolchain.
{ pkgs }:

pkgs.mkShell {
  packages = [
    (pkgs.python3.withPackages (ps: with ps; [
      pydantic typer rich asyncssh httpx tenacity
      pytest pytest-asyncio pytest-timeout mypy
    ]))
    pkgs.ruff
    pkgs.uv
    pkgs.openssh
    pkgs.restic
    pkgs.git
    pkgs.nodejs
    pkgs.chromium
  ];
  shellHook = ''
    export PYTHONPATH="$PWD/src''${PYTHONPATH:+:$PYTHONPATH}"
  '';
}
