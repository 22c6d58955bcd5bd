# A small stand-in for nixpkgs' module system (lib.evalModules, mkOption, mkIf, types), enough
# to evaluate homeops' NixOS modules without nixpkgs. It keeps the parts that catch mistakes:
# a definition of an undeclared option is an error, every definition is type-checked, mkIf
# and mkMerge are pushed down to the options, mkDefault/mkForce priorities pick the winner,
# and two different definitions of a single-valued option conflict. Submodules are evaluated
# like a module tree of their own (with `name`, the attribute they sit under, as an argument).
# Not modelled: imports of disabled modules, option docs, freeform types.
lib:
let
  inherit (builtins)
    all any attrNames concatMap concatStringsSep elem filter foldl' head isAttrs isBool isFunction
    isInt isList isPath isString listToAttrs map match toJSON zipAttrsWith;

  isOption = v: isAttrs v && (v._type or null) == "option";
  isDerivation = v: isAttrs v && (v.type or null) == "derivation";
  showLoc = concatStringsSep ".";
  # toJSON would copy a path into the store (and fail on a missing file): show it as text.
  showValue = v: if isPath v then toString v else if isFunction v then "<function>" else toJSON v;

  # A definition after mkIf/mkMerge: a list of { prio; value; }.
  flatten = prio: v:
    if isAttrs v && v ? _type then
      if v._type == "if" then (if v.condition then flatten prio v.content else [ ])
      else if v._type == "merge" then concatMap (flatten prio) v.contents
      else if v._type == "override" then flatten v.priority v.content
      else [ { inherit prio; value = v; } ]
    else [ { inherit prio; value = v; } ];

  # Only the definitions of the best (lowest) priority count, as in nixpkgs.
  bestDefs = defs:
    let best = foldl' (m: d: if d.prio < m then d.prio else m) 9999 defs;
    in map (d: d.value) (filter (d: d.prio == best) defs);

  mergeEqual = loc: values:
    let first = head values; in
    if all (v: v == first) values then first
    else throw "The option `${showLoc loc}' has conflicting definitions: ${concatStringsSep ", " (map showValue values)}";

  mkType = { name, check, merge ? mergeEqual }: { _type = "option-type"; inherit name check merge; };

  # attrsOf/anything: merge attribute sets key by key, pushing mkIf/mkMerge/mkDefault inside.
  mergeKeys = elemMerge: loc: values:
    let names = lib.unique (concatMap attrNames values);
    in listToAttrs (filter (x: x != null) (map (n:
      let defs = concatMap (v: if v ? ${n} then flatten 100 v.${n} else [ ]) values;
      in if defs == [ ] then null else { name = n; value = elemMerge (loc ++ [ n ]) (bestDefs defs); }
    ) names));

  anything = mkType {
    name = "anything";
    check = _: true;
    merge = loc: values:
      if all (v: isAttrs v && !isDerivation v) values then mergeKeys anything.merge loc values
      else if all isList values then concatMap (x: x) values
      else mergeEqual loc values;
  };

  checked = type: loc: values:
    let bad = filter (v: !type.check v) values; in
    if bad != [ ] then
      throw "A definition for option `${showLoc loc}' is not of type `${type.name}': ${showValue (head bad)}"
    else type.merge loc values;

  types = rec {
    inherit anything;
    str = mkType { name = "str"; check = isString; };
    bool = mkType { name = "bool"; check = isBool; };
    int = mkType { name = "int"; check = isInt; };
    path = mkType { name = "path"; check = v: isPath v || (isString v && match "/.*" v != null); };
    package = mkType { name = "package"; check = isDerivation; };
    port = ints.between 0 65535;
    ints = {
      between = lo: hi: mkType { name = "integer between ${toString lo} and ${toString hi}"; check = v: isInt v && v >= lo && v <= hi; };
      unsigned = mkType { name = "unsigned integer"; check = v: isInt v && v >= 0; };
      positive = mkType { name = "positive integer"; check = v: isInt v && v > 0; };
    };
    strMatching = re: mkType { name = "string matching ${re}"; check = v: isString v && match re v != null; };
    enum = values: mkType { name = "one of ${toJSON values}"; check = v: elem v values; };
    nullOr = t: mkType {
      name = "null or ${t.name}";
      check = v: v == null || t.check v;
      merge = loc: values:
        if all (v: v == null) values then null
        else if any (v: v == null) values then throw "The option `${showLoc loc}' is defined both null and not null"
        else t.merge loc values;
    };
    listOf = t: mkType {
      name = "list of ${t.name}";
      check = v: isList v && all t.check v;
      merge = _loc: values: concatMap (x: x) values;
    };
    lines = mkType {
      name = "strings concatenated with \"\\n\"";
      check = isString;
      merge = _loc: values: concatStringsSep "\n" values;
    };
    attrsOf = t: mkType {
      name = "attribute set of ${t.name}";
      check = isAttrs;
      merge = mergeKeys (checked t);
    } // { nestedTypes.elemType = t; };
    # A module of its own per value: its definitions are the values (shorthand: config only).
    submodule = m: mkType {
      name = "submodule";
      check = v: isAttrs v || isFunction v;
      merge = loc: values: (evalSub loc ([ m ] ++ values)).config;
    } // { getSubOptions = prefix: (evalSub prefix [ m ]).options; };
  };

  evalSub = loc: modules: evalModules {
    inherit modules;
    prefix = loc;
    specialArgs.name = builtins.elemAt loc (builtins.length loc - 1);
  };

  # Declarations of all modules as one tree; the same option declared twice is an error.
  mergeDecls = loc: a: b:
    listToAttrs (map (n: {
      name = n;
      value =
        if !(a ? ${n}) then b.${n}
        else if !(b ? ${n}) then a.${n}
        else if isOption a.${n} || isOption b.${n} then throw "The option `${showLoc (loc ++ [ n ])}' is declared twice"
        else mergeDecls (loc ++ [ n ]) a.${n} b.${n};
    }) (lib.unique (attrNames a ++ attrNames b)));

  # A definition of a subtree as { name = [ definitions ]; }, with mkIf/mkMerge/mkOverride
  # moved inside without evaluating conditions (they may read config: nixpkgs does the same).
  pushDown = v:
    if isAttrs v && v ? _type then
      if v._type == "if" then
        lib.mapAttrs (_: map (x: { _type = "if"; inherit (v) condition; content = x; })) (pushDown v.content)
      else if v._type == "merge" then
        zipAttrsWith (_: concatMap (x: x)) (map pushDown v.contents)
      else if v._type == "override" then
        lib.mapAttrs (_: map (x: { _type = "override"; inherit (v) priority; content = x; })) (pushDown v.content)
      else throw "mock lib: cannot push ${v._type} into an option tree"
    else lib.mapAttrs (_: x: [ x ]) v;

  subDefs = n: pushed: concatMap (p: p.${n} or [ ]) pushed;

  # The value of every declared option from the definitions (a list of trees).
  evalTree = decls: loc: defs:
    let pushed = map pushDown defs; in
    lib.mapAttrs (n: decl:
      let here = loc ++ [ n ]; in
      if isOption decl then
        let values = bestDefs (concatMap (flatten 100) (subDefs n pushed)); in
        if values != [ ] then checked decl.type here values
        else if decl ? default then checked decl.type here [ decl.default ]
        else throw "The option `${showLoc here}' is used but not defined"
      else evalTree decl here (subDefs n pushed)
    ) decls;

  # Every definition names a declared option (forced on the returned config only, so a
  # module's own reads of config do not depend on it).
  checkTree = decls: loc: defs:
    let
      pushed = map pushDown defs;
      undeclared = filter (n: !(decls ? ${n})) (concatMap attrNames pushed);
    in
    if undeclared != [ ] then throw "The option `${showLoc (loc ++ [ (head undeclared) ])}' does not exist"
    else all (n: isOption decls.${n} || checkTree decls.${n} (loc ++ [ n ]) (subDefs n pushed)) (attrNames decls);

  evalModules = { modules, specialArgs ? { }, prefix ? [ ] }:
    let
      args = specialArgs // { inherit lib config options; };
      load = m:
        let
          m1 = if isPath m || isString m then import m else m;
          m2 = if isFunction m1 then m1 args else m1;
          shaped = if m2 ? options || m2 ? config then m2 else { config = removeAttrs m2 [ "imports" ]; };
        in [ shaped ] ++ concatMap load (m2.imports or [ ]);
      loaded = concatMap load modules;
      options = foldl' (mergeDecls prefix) { } (map (m: m.options or { }) loaded);
      defs = map (m: m.config or { }) loaded;
      config = evalTree options prefix defs;
    in
    { inherit options; config = builtins.seq (checkTree options prefix defs) config; };
in
{
  inherit types evalModules;
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: { _type = "option"; type = types.bool; default = false; description = "Whether to enable ${name}."; };
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkDefault = content: { _type = "override"; priority = 1000; inherit content; };
  mkForce = content: { _type = "override"; priority = 50; inherit content; };
  literalExpression = text: { _type = "literalExpression"; inherit text; };
}
