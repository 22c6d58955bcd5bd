# services.homeops.svc: seed 002's home-server services on NixOS, run by homeops' `svc`.
#
# From `services.<name>` records (the seed's metadata schema: compose, files, secretFiles,
# backup) it makes:
#   /etc/svc/services.json        what `svc` reads (homeops/services/settings.py, nothing more)
#   docker-services-deploy        oneshot: each service's `files` copied from the store to
#                                 /var/lib/docker-services/<svc>, `secretFiles` symlinked to
#                                 where vault-agent renders them, stale deployments pruned
#   docker-network-<n>,           oneshots: the external networks and volumes the compose
#   docker-volume-<n>             files name, created when missing
#   docker-compose-<svc>          the compose project, in the foreground (see composeUnit)
#   backup-<svc> (+ timer)        `svc backup` to the local and the remote repository
#   vault-agent templates         services.vault-agent.instances.<vaultAgentInstance>
# Programs are named by store path (`${pkgs.X}/bin/X`, the seed's rule): in services.json's
# `tools`, on every command line and in every script (the deploy script's only PATH is
# coreutils' bin).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;

  cfg = config.services.homeops.svc;
  json = pkgs.formats.json { };

  stateDir = "/var/lib/svc";
  exe = "${cfg.package}/bin/svc";
  bash = "${pkgs.bash}/bin/bash";
  docker = "${pkgs.docker}/bin/docker";
  compose = "${pkgs.docker-compose}/bin/docker-compose";

  # What `svc` runs (services.json `tools`).
  tools = {
    restic = "${pkgs.restic}/bin/restic";
    inherit docker compose bash;
    systemctl = "${pkgs.systemd}/bin/systemctl";
    journalctl = "${pkgs.systemd}/bin/journalctl";
  };

  # -- types: the rules of homeops/services/settings.py, checked at evaluation ----------------

  absolute = types.strMatching "/.*";
  # A file read at run time: an absolute path as a string. A Nix path literal would copy a
  # secret into the world-readable store, so the type refuses it.
  secretPath = types.nullOr absolute;
  dockerName = types.strMatching "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}";
  tag = types.strMatching "[A-Za-z0-9_.:@+=/-]{1,128}";
  duration = types.strMatching "([0-9]+([.][0-9]+)?(ms|s|m|h|d))+";
  # A path inside the service directory: no "..", no absolute path, nothing a systemd
  # command line or the deploy script would have to quote.
  component = "[.]?[A-Za-z0-9_+@-][A-Za-z0-9._+@-]*";
  relative = types.strMatching "${component}(/${component})*";
  serviceName = "[a-z0-9][a-z0-9_-]{0,62}";
  manifest = ".svc-deployed";

  fileOptions = {
    options = {
      source = mkOption {
        type = types.path;
        example = literalExpression "./prometheus_config.yml";
        description = "The file (or directory) to deploy; a path literal is copied to the store.";
      };
      destination = mkOption {
        type = types.nullOr relative;
        default = null;
        description = "Where in the service directory (null: the attribute name).";
      };
      executable = mkOption {
        type = types.bool;
        default = false;
        description = "Deploy with mode 0755 instead of 0644 (a file; a directory keeps the store's modes).";
      };
    };
  };

  secretFileOptions = {
    options = {
      template = mkOption {
        type = types.str;
        example = ''{{ with secret "kv/data/app" }}{{ .Data.data.key }}{{ end }}'';
        description = "vault-agent template text (Vault's template syntax; never the secret itself).";
      };
      destination = mkOption {
        type = types.nullOr relative;
        default = null;
        description = "Name in the service directory (a symlink) and under <secretsDir>/<svc> (null: the attribute name).";
      };
      perms = mkOption {
        type = types.strMatching "0?[0-7]{3}";
        default = "0400";
        description = "Mode vault-agent gives the rendered file.";
      };
    };
  };

  serviceOptions = { name, ... }: {
    options = {
      name = mkOption {
        type = types.str;
        default = name;
        defaultText = literalExpression "<the attribute name>";
        description = "The service's name: its attribute name (a seed record's `name` may be given; it must match).";
      };
      compose = {
        enable = mkOption { type = types.bool; default = true; description = "Run the compose project as docker-compose-<svc>."; };
        path = mkOption {
          type = types.nullOr absolute;
          default = null;
          example = "/srv/homeserver/services/app/docker-compose.yml";
          description = "Compose file on the host (null: <servicesRoot>/<svc>/docker-compose.yml, deployed from `files`).";
        };
        networks = mkOption { type = types.listOf dockerName; default = [ ]; description = "External docker networks, created when missing."; };
        volumes = mkOption { type = types.listOf dockerName; default = [ ]; description = "External docker volumes, created when missing."; };
      };
      files = mkOption {
        type = types.attrsOf (types.submodule fileOptions);
        default = { };
        description = "Files copied from the store into the service directory.";
      };
      secretFiles = mkOption {
        type = types.attrsOf (types.submodule secretFileOptions);
        default = { };
        description = "vault-agent templates rendered to <secretsDir>/<svc>/<destination>, symlinked into the service directory.";
      };
      backup = {
        enable = mkOption { type = types.bool; default = false; description = "Back the service up (backup-<svc> and its timer)."; };
        paths = mkOption { type = types.listOf absolute; default = [ ]; description = "Paths backed up."; };
        volumes = mkOption { type = types.listOf dockerName; default = [ ]; description = "Docker volumes backed up (their mountpoints)."; };
        tags = mkOption { type = types.listOf tag; default = [ ]; description = "restic tags beside the service name."; };
        pre = mkOption { type = types.nullOr types.lines; default = null; description = "bash run before the backup; a failure cancels it."; };
        post = mkOption { type = types.nullOr types.lines; default = null; description = "bash run after the backup, whatever happened."; };
        exclude = mkOption { type = types.listOf (types.strMatching "[^\n]+"); default = [ ]; description = "restic --exclude patterns."; };
        policy = {
          daily = mkOption { type = types.ints.between 0 10000; default = 10; description = "Daily snapshots kept by forget --prune."; };
          weekly = mkOption { type = types.ints.between 0 10000; default = 4; description = "Weekly snapshots kept."; };
          monthly = mkOption { type = types.ints.between 0 10000; default = 4; description = "Monthly snapshots kept."; };
        };
        stop = mkOption { type = types.bool; default = false; description = "Stop the containers for the snapshot (started again right after it)."; };
        staleAfter = mkOption {
          type = types.nullOr duration;
          default = null;
          example = "36h";
          description = "`svc list` marks the last backup stale after this (null: what the policy implies).";
        };
      };
    };
  };

  repositoryOptions = which: {
    repository = mkOption {
      type = types.nullOr (types.strMatching "[^\n]+");
      default = null;
      example = if which == "local" then "/mnt/backup/restic" else "sftp:backup@nas.lan:/srv/restic/homeserver";
      description = "restic repository: a path, or sftp:/rest:/s3:… (in the Nix store: no credentials here).";
    };
    repositoryFile = mkOption {
      type = secretPath;
      default = null;
      description = "File holding the repository location instead (RESTIC_REPOSITORY_FILE), for one with credentials in it.";
    };
    passwordFile = mkOption {
      type = secretPath;
      default = null;
      example = "/run/secrets/restic-${which}";
      description = "File holding the repository password (RESTIC_PASSWORD_FILE; the units get a copy through LoadCredential).";
    };
    cacheDir = mkOption {
      type = absolute;
      default = "/var/cache/svc";
      description = "restic --cache-dir (the backup units' CacheDirectory).";
    };
    options = mkOption {
      type = types.listOf (types.strMatching "[A-Za-z0-9_.-]+=[^\n]*");
      default = [ ];
      example = [ "sftp.connections=2" ];
      description = "restic -o key=value options for this repository (sftp.command, sftp.connections, ...).";
    };
  };

  # -- what the options say --------------------------------------------------------------------

  dropNulls = lib.filterAttrs (_: v: v != null);
  destinationOf = key: entry: if entry.destination == null then key else entry.destination;

  configured = r: r.repository != null || r.repositoryFile != null;
  repos = lib.filter (name: configured cfg.repositories.${name}) [ "local" "remote" ];
  # A repository on a filesystem of this machine: the backup units then need no network.
  filesystemPath = r:
    if r.repository == null then null
    else if lib.hasPrefix "/" r.repository then r.repository
    else if lib.hasPrefix "local:/" r.repository then lib.removePrefix "local:" r.repository
    else null;
  localOnly = lib.all (name: filesystemPath cfg.repositories.${name} != null) repos;

  names = builtins.attrNames cfg.services;
  composeNames = lib.filter (n: cfg.services.${n}.compose.enable) names;
  backupNames = lib.filter (n: cfg.services.${n}.backup.enable) names;
  deployedNames = lib.filter (n: cfg.services.${n}.files != { } || cfg.services.${n}.secretFiles != { }) names;
  composeFile = n: let p = cfg.services.${n}.compose.path; in if p == null then "${cfg.servicesRoot}/${n}/docker-compose.yml" else p;
  secretPaths = n: lib.mapAttrsToList (k: s: "${cfg.secretsDir}/${n}/${destinationOf k s}") cfg.services.${n}.secretFiles;
  objects = kind: lib.unique (lib.concatMap (n: cfg.services.${n}.compose.${kind}) composeNames);

  # -- /etc/svc/services.json --------------------------------------------------------------------

  repositoryJson = r: dropNulls {
    repository = r.repository;
    repository_file = r.repositoryFile;
    password_file = r.passwordFile;
    cache_dir = r.cacheDir;
    options = if r.options == [ ] then null else r.options;
  };

  serviceJson = _: s: {
    inherit (s) name;
    compose = dropNulls {
      inherit (s.compose) enable path networks volumes;
    };
    backup = dropNulls {
      inherit (s.backup) enable paths volumes tags pre post exclude stop;
      policy = { inherit (s.backup.policy) daily weekly monthly; };
      stale_after = s.backup.staleAfter;
    };
  };

  generated = {
    services_root = cfg.servicesRoot;
    repositories = lib.genAttrs repos (name: repositoryJson cfg.repositories.${name});
    restore = {
      staging_dir = cfg.restore.stagingDir;
      aside_dir = cfg.restore.asideDir;
    };
    inherit tools;
    services = lib.mapAttrs serviceJson cfg.services;
  };

  configFile = json.generate "services.json" (lib.recursiveUpdate generated cfg.settings);

  # -- scripts: NixOS runs `script` and `preStart` with bash -e (its makeJobScript) ------------

  deployScript = ''
    export PATH=${pkgs.coreutils}/bin
    root=${lib.escapeShellArg cfg.servicesRoot}
    secrets=${lib.escapeShellArg cfg.secretsDir}
  '' + builtins.readFile ./svc-deploy.sh
  + lib.concatMapStrings (n:
    let s = cfg.services.${n}; in
    "\ndeploy ${n}\n"
    + lib.concatStrings (lib.mapAttrsToList (k: f:
      "put ${destinationOf k f} ${lib.escapeShellArg "${f.source}"} ${if f.executable then "0755" else "0644"}\n") s.files)
    + lib.concatStrings (lib.mapAttrsToList (k: f: "link ${destinationOf k f}\n") s.secretFiles)
    + "finish\n") deployedNames
  + "\nprune ${lib.concatStringsSep " " deployedNames}\n";

  # `docker network|volume inspect NAME || docker network|volume create NAME` (names are
  # checked by their type: nothing to quote).
  ensureScript = kind: name: ''
    set -euo pipefail
    if ${docker} ${kind} inspect ${name} >/dev/null 2>&1; then
      echo "docker ${kind} ${name} exists"
    else
      ${docker} ${kind} create ${name}
    fi
  '';

  # Waits until vault-agent has rendered the service's secretFiles: compose reads .env when it
  # starts, and a missing one would start the containers with empty variables.
  waitScript = files: ''
    set -euo pipefail
    for file in ${lib.concatStringsSep " " files}; do
      waited=0
      until [ -e "$file" ]; do
        if [ "$waited" -ge ${toString cfg.secretsTimeout} ]; then
          echo "$file: not rendered by vault-agent-${cfg.vaultAgentInstance} within ${toString cfg.secretsTimeout}s" >&2
          exit 1
        fi
        ${pkgs.coreutils}/bin/sleep 1
        waited=$((waited + 1))
      done
    done
  '';

  # backup-<svc>: `svc backup` to each configured repository, in order. A failing repository
  # does not keep the next one from running (a dead backup disk must not cost the offsite
  # copy); the unit then fails with the first failure's exit code. The lock is held on fd 9
  # until the last `svc` (which inherits it) has exited.
  backupScript = name: ''
    set -euo pipefail
    exec 9>>${stateDir}/backup.lock
    ${pkgs.util-linux}/bin/flock 9
    status=0
    for repo in ${lib.concatStringsSep " " repos}; do
      rc=0
      ${exe} backup "$repo" ${name} || rc=$?
      if [ "$rc" -ne 0 ]; then
        echo "svc backup $repo ${name} failed (exit $rc)" >&2
        if [ "$status" -eq 0 ]; then status=$rc; fi
      fi
    done
    exit "$status"
  '';

  # -- units -------------------------------------------------------------------------------------

  # Every unit here is a client of the docker socket (root's, in effect) or writes root's
  # directories, so all run as root; this takes away what none of them uses.
  # systemd-analyze security --offline=true (systemd 252): docker-compose-* 0.8,
  # docker-network-*, docker-volume-* and docker-services-deploy 0.7; backup-* 1.0, or 1.9
  # with a network repository (see there).
  hardening = {
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateMounts = true;
    PrivateIPC = true;
    ProtectHostname = true;
    ProtectClock = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    NoNewPrivileges = true;
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
    SystemCallErrorNumber = "EPERM";
    CapabilityBoundingSet = "";
    DevicePolicy = "closed";
    KeyringMode = "private";
    UMask = "0077";
  };

  # The docker socket is a file: a unit that only talks to dockerd needs no network at all.
  socketOnly = {
    PrivateNetwork = true;
    IPAddressDeny = "any";
    RestrictAddressFamilies = [ "AF_UNIX" ];
  };

  dockerOneshot = kind: name: {
    description = "docker ${kind} ${name} (created when missing)";
    after = [ "docker.service" ];
    requires = [ "docker.service" ];
    script = ensureScript kind name;
    serviceConfig = hardening // socketOnly // {
      Type = "oneshot";
      RemainAfterExit = true;
    };
  };

  # In the foreground (Type=simple) rather than `up -d` + RemainAfterExit: the unit is active
  # exactly while compose runs the project, a project that dies fails the unit (and is
  # restarted), the containers' output lands in this unit's journal (`journalctl -u`, what
  # `svc logs` reads), and systemctl stop/start (svc start|stop, a backup's stop) is the one
  # way the project moves.
  # ExecStop is `stop`, not `down`: an image's VOLUME that the compose file does not name
  # lives in an anonymous volume, which `down` would orphan (the next `up` starts with an
  # empty one). Stopped containers are started again by `up`, recreated where the file
  # changed; `--remove-orphans` drops containers of services the file no longer has.
  composeUnit = name:
    let
      s = cfg.services.${name};
      project = "${compose} -p ${name} -f ${composeFile name}";
      nets = map (n: "docker-network-${n}.service") s.compose.networks;
      vols = map (v: "docker-volume-${v}.service") s.compose.volumes;
      secrets = secretPaths name;
      vault = lib.optional (secrets != [ ]) "vault-agent-${cfg.vaultAgentInstance}.service";
    in
    {
      description = "${name} (docker-compose)";
      after = [ "docker.service" "docker-services-deploy.service" ] ++ nets ++ vols ++ vault;
      requires = [ "docker.service" ] ++ nets ++ vols;
      wants = [ "docker-services-deploy.service" ] ++ vault;
      wantedBy = [ "multi-user.target" ];
      # The compose file sits outside the store: a change of a deployed file restarts the unit.
      restartTriggers = lib.mapAttrsToList (_: f: "${f.source}") s.files;
      preStart = lib.optionalString (secrets != [ ]) (waitScript secrets);
      serviceConfig = hardening // socketOnly // {
        Type = "simple";
        ExecStart = "${project} up --remove-orphans";
        ExecStop = "${project} stop";
        # compose's exit code when it is interrupted (SIGINT/SIGTERM as 128+n) is a stop.
        SuccessExitStatus = [ "130" "143" ];
        Restart = "on-failure";
        RestartSec = "10s";
        # read-only, not hidden: compose reads registry credentials from /root/.docker.
        ProtectHome = "read-only";
      } // lib.optionalAttrs (secrets != [ ]) {
        TimeoutStartSec = "${toString (cfg.secretsTimeout + 60)}s";
      };
    };

  # One unit runs both repositories (local, then remote), rather than a unit per repository:
  # the seed names one backup-<svc> per service, the two runs never overlap (a service with
  # backup.stop is never stopped by two runs at once), and one timer drives both.
  # flock: every backup-* unit takes one lock, so the daily timers, which fire together, run
  # the backups one after the other: restic's `forget --prune` locks a repository
  # exclusively, and would fail a concurrent backup of another service into it.
  backupUnit = name:
    let
      s = cfg.services.${name};
      credentials = lib.concatMap (repo:
        let r = cfg.repositories.${repo}; upper = lib.toUpper repo; in
        lib.optional (r.passwordFile != null) {
          name = "restic-${repo}-password"; source = r.passwordFile;
          env = "SVC_REPOSITORIES_${upper}_PASSWORD_FILE";
        }
        ++ lib.optional (r.repositoryFile != null) {
          name = "restic-${repo}-repository"; source = r.repositoryFile;
          env = "SVC_REPOSITORIES_${upper}_REPOSITORY_FILE";
        }) repos;
      repoPaths = lib.filter (p: p != null) (map (repo: filesystemPath cfg.repositories.${repo}) repos);
    in
    {
      description = "restic backup of ${name} (svc backup ${lib.concatStringsSep ", " repos})";
      after = [ "docker.service" ] ++ lib.optional (!localOnly) "network-online.target";
      wants = lib.optional (!localOnly) "network-online.target";
      # A configuration switch must not kill a backup that is running.
      restartIfChanged = false;
      # restic runs `ssh` from PATH for an sftp: repository.
      path = [ pkgs.openssh ];
      environment = {
        SVC_CONFIG = "${configFile}";
        HOMEOPS_STATE_DIR = stateDir;
      } // lib.listToAttrs (map (c: { name = c.env; value = "%d/${c.name}"; }) credentials);
      # Hardening (systemd-analyze security --offline=true): 1.0 with filesystem repositories
      # only, 1.9 with a network one. What stays open, and why:
      # - root (0.4 + PrivateUsers 0.2): `docker volume inspect` and the hooks' `docker exec`
      #   use the docker socket, and `systemctl stop/start` the service's unit; both are root's.
      # - CAP_DAC_READ_SEARCH (0.2): restic reads data owned by the containers' users.
      # - the network (0.5 + 0.3 + 0.2), only with an sftp:/rest:/s3: repository.
      # - ProtectHome=read-only (0.1): backup.paths may be under /home, and ssh (sftp:) reads
      #   root's ~/.ssh; nothing is written there.
      # Writable: the state (job ledger) and cache dirs, the service's directory and
      # backup.paths (pre hooks write their dumps there), a filesystem repository.
      script = backupScript name;
      serviceConfig = hardening // {
        Type = "oneshot";
        # systemd's default (90 s) would kill the clean-up that follows a SIGTERM.
        TimeoutStopSec = cfg.backupStopTimeout;
        LoadCredential = map (c: "${c.name}:${c.source}") credentials;
        StateDirectory = "svc";
        StateDirectoryMode = "0700";
        CacheDirectory = "svc";
        CacheDirectoryMode = "0700";
        ReadWritePaths = map (p: "-${p}")
          ([ "${cfg.servicesRoot}/${name}" ] ++ s.backup.paths ++ repoPaths);
        ProtectHome = "read-only";
        CapabilityBoundingSet = "CAP_DAC_READ_SEARCH";
        RestrictAddressFamilies = [ "AF_UNIX" ] ++ lib.optionals (!localOnly) [ "AF_INET" "AF_INET6" ];
        Nice = 10;
        IOSchedulingClass = "best-effort";
        IOSchedulingPriority = 7;
      } // lib.optionalAttrs localOnly {
        PrivateNetwork = true;
        IPAddressDeny = "any";
      };
    };

  backupTimer = name: {
    description = "Scheduled backup of ${name}";
    wantedBy = [ "timers.target" ];
    timerConfig = {
      OnCalendar = cfg.schedule;
      # A backup missed while the machine was off runs when it is back.
      Persistent = true;
    };
  };

  deployUnit = {
    description = "Deploy docker-compose service files to ${cfg.servicesRoot}";
    wantedBy = [ "multi-user.target" ];
    # Hardening: 0.7 (root without capabilities, no network). It writes only the services
    # root and the secrets directory (to remove what it no longer deploys).
    script = deployScript;
    serviceConfig = hardening // socketOnly // {
      Type = "oneshot";
      # Active after it ran: a changed script (any deployed file changed) reruns it on switch.
      RemainAfterExit = true;
      ReadWritePaths = [ "-${cfg.servicesRoot}" "-${cfg.secretsDir}" ];
    };
  };

  vaultUser = config.services.vault-agent.instances.${cfg.vaultAgentInstance}.user or "root";
  vaultGroup = config.services.vault-agent.instances.${cfg.vaultAgentInstance}.group or "root";

  secretTemplates = lib.concatMap (n:
    lib.mapAttrsToList (k: s: {
      contents = s.template;
      destination = "${cfg.secretsDir}/${n}/${destinationOf k s}";
      inherit (s) perms;
    }) cfg.services.${n}.secretFiles) names;

  # `svc` for an administrator: the units' job ledger (svc list reads it) unless told otherwise.
  adminSvc = lib.hiPrio (pkgs.writeShellScriptBin "svc" ''
    export HOMEOPS_STATE_DIR="''${HOMEOPS_STATE_DIR:-${stateDir}}"
    exec ${exe} "$@"
  '');

  under = dir: path: path == dir || lib.hasPrefix "${dir}/" path;
  badNames = lib.filter (n: builtins.match serviceName n == null) names;
  destinations = n:
    lib.mapAttrsToList destinationOf cfg.services.${n}.files
    ++ lib.mapAttrsToList destinationOf cfg.services.${n}.secretFiles;
in
{
  options.services.homeops.svc = {
    enable = mkEnableOption "homeops svc: docker-compose services, their deployment and restic backups (seed 002)";

    package = mkOption {
      type = types.package;
      default = pkgs.homeops or (pkgs.callPackage ../package.nix { });
      defaultText = literalExpression "pkgs.homeops";
      description = "The homeops package; its bin/svc runs the backups.";
    };

    services = mkOption {
      type = types.attrsOf (types.submodule serviceOptions);
      default = { };
      description = "The services, by name (seed 002's metadata records; the name is the attribute).";
    };

    repositories = {
      local = repositoryOptions "local";
      remote = repositoryOptions "remote";
    };

    restore = {
      stagingDir = mkOption { type = absolute; default = "${stateDir}/restore"; description = "Default restore target: <stagingDir>/<svc>/<snapshot>."; };
      asideDir = mkOption { type = absolute; default = "${stateDir}/aside"; description = "Where `svc restore --in-place` moves the live data (kept)."; };
    };

    schedule = mkOption {
      type = types.str;
      default = "daily";
      example = "*-*-* 03:00:00";
      description = "When the backup-<svc> timers fire (systemd OnCalendar); the backups then run one at a time.";
    };

    backupStopTimeout = mkOption {
      type = types.str;
      default = "35min";
      example = "1h";
      description = ''
        How long systemd lets a stopped backup-<svc> (shutdown, `systemctl stop`) clean up
        before killing it (its TimeoutStopSec): on SIGTERM `svc backup` starts the service's
        containers again (up to 10 min), runs the post hook (up to hook_timeout, default
        10 min) and removes restic's lock (up to 2 min). Killed before that, the service stays
        stopped. Keep it above hook_timeout + 25 min.
      '';
    };

    servicesRoot = mkOption {
      type = absolute;
      default = "/var/lib/docker-services";
      description = "Where service directories are deployed (services.json services_root).";
    };

    secretsDir = mkOption {
      type = absolute;
      default = "/var/lib/secrets";
      description = "vault-agent renders secretFiles to <secretsDir>/<svc>/<destination>.";
    };

    secretsTimeout = mkOption {
      type = types.ints.positive;
      default = 120;
      description = "Seconds docker-compose-<svc> waits for its secretFiles to be rendered before failing.";
    };

    vaultAgentInstance = mkOption {
      type = types.str;
      default = "svc";
      description = ''
        The services.vault-agent instance that renders secretFiles. Configure its Vault
        address and auto_auth yourself (services.vault-agent.instances.<name>.settings);
        this module adds the templates.
      '';
    };

    settings = mkOption {
      type = json.type;
      default = { };
      example = literalExpression ''{ hook_timeout = "30m"; restic_timeout = "12h"; }'';
      description = ''
        More keys of services.json (hook_timeout, restic_timeout, systemd), merged over the
        ones the options set. In the Nix store: never secrets.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = badNames == [ ];
        message = "services.homeops.svc.services: ${lib.concatStringsSep ", " badNames}: a service name is 1-63 of a-z 0-9 _ -, starting with a letter or digit.";
      }
    ] ++ lib.concatMap (n:
      let s = cfg.services.${n}; where = "services.homeops.svc.services.${n}"; in [
        {
          assertion = s.name == n;
          message = "${where}.name is \"${s.name}\", not its attribute name.";
        }
        {
          assertion = !s.backup.enable || s.backup.paths != [ ] || s.backup.volumes != [ ];
          message = "${where}.backup.enable needs backup.paths or backup.volumes.";
        }
        {
          assertion = !s.backup.enable || repos != [ ];
          message = "${where}.backup.enable needs a repository: set services.homeops.svc.repositories.local.repository (or remote).";
        }
        {
          assertion = !s.compose.enable || s.compose.path != null || builtins.elem "docker-compose.yml" (destinations n);
          message = "${where}.compose: no compose file; set compose.path, or deploy one with files.\"docker-compose.yml\".source.";
        }
        {
          assertion = lib.unique (destinations n) == destinations n;
          message = "${where}: two files/secretFiles entries share a destination.";
        }
        {
          assertion = !builtins.elem manifest (destinations n);
          message = "${where}: ${manifest} is the deployment's own manifest.";
        }
      ]) names
    ++ lib.concatMap (repo:
      let r = cfg.repositories.${repo}; where = "services.homeops.svc.repositories.${repo}"; in [
        {
          assertion = r.repository == null || r.repositoryFile == null;
          message = "${where}: set repository or repositoryFile, not both.";
        }
        {
          assertion = !configured r || r.passwordFile != null;
          message = "${where}.passwordFile is required for a configured repository.";
        }
        {
          assertion = lib.all (p: p == null || !under "/nix/store" p) [ r.passwordFile r.repositoryFile ];
          message = "${where}: secret files must live outside the Nix store.";
        }
      ]) [ "local" "remote" ];

    virtualisation.docker.enable = lib.mkDefault true;

    environment.systemPackages = [ cfg.package adminSvc ];
    environment.etc."svc/services.json".source = configFile;

    systemd.tmpfiles.rules = [ "d ${cfg.servicesRoot} 0755 root root -" ]
      ++ map (n: "d ${cfg.secretsDir}/${n} 0700 ${vaultUser} ${vaultGroup} -")
        (lib.filter (n: cfg.services.${n}.secretFiles != { }) names);

    systemd.services =
      { docker-services-deploy = deployUnit; }
      // lib.listToAttrs (map (n: { name = "docker-network-${n}"; value = dockerOneshot "network" n; }) (objects "networks"))
      // lib.listToAttrs (map (v: { name = "docker-volume-${v}"; value = dockerOneshot "volume" v; }) (objects "volumes"))
      // lib.listToAttrs (map (n: { name = "docker-compose-${n}"; value = composeUnit n; }) composeNames)
      // lib.listToAttrs (map (n: { name = "backup-${n}"; value = backupUnit n; }) backupNames);

    systemd.timers = lib.listToAttrs (map (n: { name = "backup-${n}"; value = backupTimer n; }) backupNames);

    services.vault-agent.instances = mkIf (secretTemplates != [ ]) {
      ${cfg.vaultAgentInstance}.settings.template = secretTemplates;
    };
  };
}
