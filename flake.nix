{
  description = "homeops: one tool that runs a NixOS homelab end to end";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  # Thin on purpose: every output is defined under ./nix so the flake only wires systems.
  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system:
        f (import nixpkgs { inherit system; overlays = [ self.overlays.default ]; }));
    in
    {
      overlays.default = import ./nix/overlay.nix;

      nixosModules = {
        default = self.nixosModules.win-automation;
        win-automation = import ./nix/modules/win-automation.nix;
        # services.homeops.svc: seed 002's compose services, their deployment and backups.
        svc = import ./nix/modules/svc.nix;
      };

      packages = forAllSystems (pkgs: {
        default = pkgs.homeops;
        homeops = pkgs.homeops;
        win-automation = pkgs.win-automation;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${pkgs.homeops}/bin/homeops";
        };
        win-automation = {
          type = "app";
          program = "${pkgs.win-automation}/bin/win-automation";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = import ./nix/devshell.nix { inherit pkgs; };
      });
    };
}
