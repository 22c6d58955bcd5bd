# A tiny stand-in for nixpkgs, enough to evaluate homeops' flake outputs without the real
# package set (this machine has Nix but no nixpkgs). It applies overlays like nixpkgs does
# and gives every derivation-like call back its arguments so tests can inspect them.
{ system, overlays ? [ ] }:
let
  pyNames = builtins.fromJSON (builtins.readFile ./python-names.json);
  pythonPackages = builtins.listToAttrs (map (n: { name = n; value = "python3Packages.${n}"; }) pyNames)
    // { buildPythonApplication = args: args // { type = "derivation"; outPath = "/nix/store/mock-${args.pname}"; }; };
  lib = import ./lib.nix;
  base = final: {
    inherit lib system;
    python3Packages = pythonPackages;
    python3 = { withPackages = f: { pythonWith = f pythonPackages; }; };
    callPackage = path: extra:
      let f = import path; in f ((builtins.intersectAttrs (builtins.functionArgs f) final) // extra);
    mkShell = args: args // { shell = true; };
    ruff = "ruff"; uv = "uv"; openssh = "openssh"; restic = "restic"; git = "git";
    nodejs = "nodejs"; chromium = "chromium";
  };
  apply = prevFix: overlay: final: let prev = prevFix final; in prev // overlay final prev;
  fix = f: let x = f x; in x;
in
fix (builtins.foldl' apply base overlays)
