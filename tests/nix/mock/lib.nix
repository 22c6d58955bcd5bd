# The few nixpkgs lib functions homeops' Nix files use.
{
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  cleanSource = src: src;
  licenses.mit = "mit";
  platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
}
