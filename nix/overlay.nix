# Adds `homeops` to pkgs, built against the overlaid package set's python3, and the seed's
# name `win-automation` (the same store path; its bin/win-automation is the default program).
final: prev: {
  homeops = final.callPackage ./package.nix { };
  win-automation = final.callPackage ./package.nix { mainProgram = "win-automation"; };
}
