# Adds `homeops` to pkgs, built against the overlaid package set's python3.
final: prev: {
  homeops = final.callPackage ./package.nix { };
}
