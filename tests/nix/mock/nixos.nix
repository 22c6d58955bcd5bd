# The few NixOS options homeops' modules set, declared so that an undeclared one is an error,
# and evaluated like nixos/lib/eval-config.nix does: failed assertions throw. `lib` is the mock
# (./lib.nix) or, when a test is given one, nixpkgs' real lib.
{ lib, pkgs, modules }:
let
  inherit (lib) mkOption types;
  any = types.anything;
  base = {
    options = {
      assertions = mkOption { type = types.listOf any; default = [ ]; };
      users.users = mkOption { type = types.attrsOf any; default = { }; };
      users.groups = mkOption { type = types.attrsOf any; default = { }; };
      environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      environment.etc = mkOption { type = types.attrsOf any; default = { }; };
      systemd.services = mkOption { type = types.attrsOf (types.attrsOf any); default = { }; };
      systemd.timers = mkOption { type = types.attrsOf (types.attrsOf any); default = { }; };
      systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
      virtualisation.docker.enable = mkOption { type = types.bool; default = false; };
      # nixos/modules/services/security/vault-agent.nix: instances.<name>.settings is free-form
      # JSON whose `template` is a list of attribute sets (merged across modules).
      services.vault-agent.instances = mkOption { type = types.attrsOf any; default = { }; };
    };
  };
  eval = lib.evalModules { modules = [ base ] ++ modules; specialArgs = { inherit pkgs; }; };
  failed = map (a: a.message) (builtins.filter (a: !a.assertion) eval.config.assertions);
in
if failed == [ ] then eval.config
else throw "Failed assertions:\n- ${builtins.concatStringsSep "\n- " failed}"
