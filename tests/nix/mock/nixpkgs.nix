# A tiny stand-in for nixpkgs, enough to evaluate homeops' flake outputs without the real
# package set (this machine has Nix but no nixpkgs). It applies overlays like nixpkgs does
# and gives every derivation-like call back its arguments so tests can inspect them.
# `lib` may be nixpkgs' real one (tests/nix/test_win_module.py compares the two).
{ system, overlays ? [ ], lib ? import ./lib.nix }:
let
  pyNames = builtins.fromJSON (builtins.readFile ./python-names.json);
  pythonPackages = builtins.listToAttrs (map (n: { name = n; value = "python3Packages.${n}"; }) pyNames)
    // { buildPythonApplication = args: args // { type = "derivation"; outPath = "/nix/store/mock-${args.pname}"; }; };
  base = final: {
    inherit lib system;
    python3Packages = pythonPackages;
    python3 = { withPackages = f: { pythonWith = f pythonPackages; }; };
    callPackage = path: extra:
      let f = import path; in f ((builtins.intersectAttrs (builtins.functionArgs f) final) // extra);
    mkShell = args: args // { shell = true; };
    # A store file named by a hash of its text, as builtins.toFile would be; `text` stays
    # inspectable (nothing is written: evaluation is read-only).
    writeText = name: text: {
      type = "derivation"; inherit name text;
      outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" text)}-${name}";
    };
    formats.json = { }: {
      type = lib.types.attrsOf lib.types.anything;
      generate = name: value: final.writeText name (builtins.toJSON value);
    };
    # A script in the store, as writeShellScriptBin makes one (bin/NAME; `text` kept).
    writeShellScriptBin = name: text: {
      type = "derivation"; inherit name text;
      outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" text)}-${name}";
    };
    ruff = "ruff"; uv = "uv"; git = "git";
    nodejs = "nodejs"; chromium = "chromium";
  } // builtins.listToAttrs (map (n: { name = n; value = { type = "derivation"; name = n; outPath = "/nix/store/mock-${n}"; }; })
    # Packages whose bin/ the modules name: /nix/store/mock-NAME/bin/PROGRAM.
    [ "restic" "docker" "docker-compose" "systemd" "bash" "coreutils" "util-linux" "openssh" ]);
  apply = prevFix: overlay: final: let prev = prevFix final; in prev // overlay final prev;
  fix = f: let x = f x; in x;
in
fix (builtins.foldl' apply base overlays)
