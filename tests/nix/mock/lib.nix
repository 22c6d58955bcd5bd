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
    inherit (builtins) concatMap concatStringsSep;
    concatStrings = builtins.concatStringsSep "";
    concatMapStrings = f: list: lib.concatStrings (map f list);
    mapAttrsToList = f: set: map (n: f n set.${n}) (builtins.attrNames set);
    removePrefix = pre: s:
      if lib.hasPrefix pre s
      then builtins.substring (builtins.stringLength pre) (builtins.stringLength s) s
      else s;
    toUpper = builtins.replaceStrings
      (lib.stringToCharacters "abcdefghijklmnopqrstuvwxyz")
      (lib.stringToCharacters "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    stringToCharacters = s: builtins.genList (i: builtins.substring i 1 s) (builtins.stringLength s);
    # As nixpkgs' lib.strings.escapeShellArg: quoted only when needed.
    escapeShellArg = arg:
      let string = toString arg; in
      if builtins.match "[[:alnum:],._+:@%/-]+" string == null
      then "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] string}'"
      else string;
    # As nixpkgs' lib.meta.hiPrio on a derivation without overrideAttrs.
    hiPrio = drv: drv // { meta = (drv.meta or { }) // { priority = -10; }; };
  } // import ./modules.nix lib;
in
lib
