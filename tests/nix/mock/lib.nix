# The few nixpkgs lib functions homeops' Nix files use, and a small module system
# (modules.nix) for evaluating its NixOS modules.
let
  lib = {
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    cleanSource = src: src;
    licenses.mit = "mit";
    platforms.linux = [ "x86_64-linux" "aarch64-linux" ];

    inherit (builtins) all any filter listToAttrs mapAttrs;
    filterAttrs = pred: set:
      builtins.listToAttrs (builtins.filter (x: pred x.name x.value)
        (map (n: { name = n; value = set.${n}; }) (builtins.attrNames set)));
    recursiveUpdate = a: b:
      a // builtins.mapAttrs (n: v:
        if a ? ${n} && builtins.isAttrs a.${n} && builtins.isAttrs v then lib.recursiveUpdate a.${n} v else v) b;
    unique = builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];
    hasPrefix = pre: s: builtins.substring 0 (builtins.stringLength pre) s == pre;
    optional = cond: x: if cond then [ x ] else [ ];
    optionals = cond: xs: if cond then xs else [ ];
    optionalAttrs = cond: set: if cond then set else { };
    optionalString = cond: s: if cond then s else "";
  } // import ./modules.nix lib;
in
lib
