# services.win-automation: the windows domain of homeops (seeds 000/001) as two systemd units,
# `win-automation-worker` (runs queued jobs) and `win-automation-supervisor` (checks and repairs).
#
# Every option ends up in one place the program reads: the generated JSON config
# (WIN_AUTOMATION_CONFIG, the seed's keys), or the unit itself (the worker's --concurrency,
# the supervisor's --debug, credentials). Secrets never enter the Nix store: the token, the
# ws path and the SSH key are handed over with LoadCredential and found through the
# program's *_FILE variables (or the identity file's path) pointing into $CREDENTIALS_DIRECTORY.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression optional optionals optionalAttrs;

  cfg = config.services.win-automation;
  json = pkgs.formats.json { };

  user = "win-automation";
  stateDir = "/var/lib/win-automation";
  logsDir = "/var/log/win-automation";

  # The program's duration syntax (homeops.core.durations): 500ms, 30s, 10m, 1h30m, 2d.
  duration = types.strMatching "([0-9]+([.][0-9]+)?(ms|s|m|h|d))+";

  # A file read at service start: an absolute path as a string. A Nix path literal would be
  # copied into the world-readable store, so it is refused by the type (types.str).
  secretPath = types.nullOr (types.strMatching "/.*");

  under = dir: path: path == dir || lib.hasPrefix "${dir}/" path;

  dropNulls = lib.filterAttrs (_: v: v != null);

  # The seed's JSON keys (homeops/windows/settings.py); null means "the program's default".
  generated = {
    windows = dropNulls {
      ssh_host = cfg.windows.sshHost;
      ssh_port = cfg.windows.sshPort;
      ssh_user = cfg.windows.sshUser;
      known_hosts = cfg.windows.knownHosts;
    };
    aloha = dropNulls {
      server_url = cfg.aloha.serverUrl;
      client_url = cfg.aloha.clientUrl;
      server_start_cmd = cfg.aloha.serverStartCmd;
      client_start_cmd = cfg.aloha.clientStartCmd;
      client_log_path = cfg.aloha.clientLogPath;
    };
    hatchet = dropNulls {
      http_url = cfg.hatchet.httpUrl;
      grpc_address = cfg.hatchet.grpcAddress;
      health_url = cfg.hatchet.healthUrl;
      namespace = cfg.hatchet.namespace;
      worker_concurrency = cfg.hatchet.workerConcurrency;
    };
    playwright = {
      host = cfg.playwright.host;
      port = cfg.playwright.port;
    };
    artifacts = {
      out_dir = cfg.artifacts.outDir;
      retention_days = cfg.artifacts.retentionDays;
    };
    worker = dropNulls {
      metrics = cfg.worker.metrics;
      metrics_interval = cfg.worker.metricsInterval;
      metrics_path = cfg.worker.metricsPath;
    };
    supervisor = {
      interval = cfg.supervisor.interval;
    };
  };

  configFile = json.generate "win-automation.json" (lib.recursiveUpdate generated cfg.settings);

  # name -> (source file, env variable and its value). %d is systemd's credentials directory.
  credentials = lib.filter (c: c.source != null) [
    { name = "hatchet-token"; source = cfg.hatchet.tokenFile; env = "WIN_AUTOMATION_HATCHET_TOKEN_FILE"; }
    { name = "playwright-ws-path"; source = cfg.playwright.wsPathFile; env = "WIN_AUTOMATION_PLAYWRIGHT_WS_PATH_FILE"; }
    # Not a *_FILE secret variable: the setting itself is a path, so it points at the copy.
    { name = "ssh-identity"; source = cfg.windows.sshIdentityFile; env = "WIN_AUTOMATION_WINDOWS_SSH_IDENTITY_FILE"; }
  ];

  # Writable places outside StateDirectory/LogsDirectory (ProtectSystem=strict hides the rest).
  # "-": a missing path does not stop the unit; tmpfiles creates the artifact root first.
  extraWritable =
    optional (!under stateDir cfg.artifacts.outDir) cfg.artifacts.outDir
    ++ optional (cfg.worker.metricsPath != null
      && !under logsDir (dirOf cfg.worker.metricsPath)
      && !under stateDir (dirOf cfg.worker.metricsPath)) (dirOf cfg.worker.metricsPath);

  serviceConfig = {
    Type = "simple";
    Restart = "on-failure";
    RestartSec = "5s";
    # SIGTERM goes to the program first: the worker finishes or requeues its jobs, and the
    # Playwright driver it spawned is only killed after that.
    KillMode = "mixed";
    TimeoutStopSec = "60s";

    # A static system user, not DynamicUser: both units share one job store and artifact
    # root (a dynamic UID per unit could not), files outside /var/lib keep a stable owner,
    # and the seed's sops-nix example sets `owner = "win-automation"` on the secrets.
    User = user;
    Group = user;
    StateDirectory = "win-automation";
    StateDirectoryMode = "0750";
    LogsDirectory = "win-automation";
    LogsDirectoryMode = "0750";
    WorkingDirectory = stateDir;
    UMask = "0077";
    LoadCredential = map (c: "${c.name}:${c.source}") credentials;
    ReadWritePaths = map (p: "-${p}") extraWritable;

    # Hardening (systemd-analyze security --offline=true: 1.2). What stays open, and why:
    # the network (SSH to the VM, HTTP to Aloha/Hatchet/Playwright, on loopback or the LAN),
    # and writable+executable memory: the Python Playwright client runs a Node driver (V8 JIT).
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateUsers = true;
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
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    RemoveIPC = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = false;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
    SystemCallErrorNumber = "EPERM";
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    DevicePolicy = "closed";
    KeyringMode = "private";
  };

  environment = {
    WIN_AUTOMATION_CONFIG = "${configFile}";
    HOMEOPS_STATE_DIR = stateDir;
    HOME = stateDir;
  } // lib.listToAttrs (map (c: { name = c.env; value = "%d/${c.name}"; }) credentials);

  exe = "${cfg.package}/bin/win-automation";

  unit = description: exec: {
    inherit description environment;
    after = [ "network-online.target" ];
    wants = [ "network-online.target" ];
    wantedBy = [ "multi-user.target" ];
    serviceConfig = serviceConfig // { ExecStart = exec; };
  };
in
{
  options.services.win-automation = {
    enable = mkEnableOption "win-automation, the homeops Windows VM automation (config and CLI)";

    package = mkOption {
      type = types.package;
      default = pkgs.win-automation or (pkgs.callPackage ../package.nix { mainProgram = "win-automation"; });
      defaultText = literalExpression "pkgs.win-automation";
      description = "The homeops package; its bin/win-automation runs the units.";
    };

    settings = mkOption {
      type = json.type;
      default = { };
      example = literalExpression ''{ hatchet.job_timeout = "30m"; supervisor.failpoint = "aloha_server"; }'';
      description = ''
        More keys of the JSON config (the seed's names, e.g. hatchet.job_timeout,
        hatchet.retry_max, hatchet.tls_strategy), merged over the ones the options set.
        Never secrets: this file is in the Nix store; use the *File options.
      '';
    };

    windows = {
      sshHost = mkOption { type = types.str; default = "localhost"; description = "VM address (the QEMU host forward)."; };
      sshPort = mkOption { type = types.port; default = 22555; description = "VM sshd port."; };
      sshUser = mkOption { type = types.str; default = "administrator"; description = "SSH user on the VM."; };
      sshIdentityFile = mkOption {
        type = secretPath;
        default = null;
        example = "/etc/win-automation/id_ed25519";
        description = "Private key for the VM, passed to the units with LoadCredential (readable by root only is fine).";
      };
      knownHosts = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        example = "/etc/win-automation/known_hosts";
        description = "known_hosts file with the VM's host key (not under /home or /root: ProtectHome hides those).";
      };
    };

    aloha = {
      serverUrl = mkOption { type = types.str; default = "http://127.0.0.1:7887/"; description = "Aloha server URL."; };
      clientUrl = mkOption { type = types.str; default = "http://127.0.0.1:7888"; description = "Aloha client URL."; };
      serverStartCmd = mkOption { type = types.nullOr types.str; default = null; description = "PowerShell that starts the Aloha server (supervisor repair)."; };
      clientStartCmd = mkOption { type = types.nullOr types.str; default = null; description = "PowerShell that starts the Aloha client (supervisor repair)."; };
      clientLogPath = mkOption { type = types.nullOr types.str; default = null; example = "C:\\Aloha\\client.log"; description = "Windows path of the client's log, followed by `aloha run --wait`."; };
    };

    hatchet = {
      httpUrl = mkOption { type = types.str; default = "http://localhost:8888"; description = "Hatchet UI/REST URL."; };
      grpcAddress = mkOption { type = types.str; default = "localhost:7077"; description = "Hatchet gRPC host:port."; };
      healthUrl = mkOption { type = types.str; default = "http://localhost:8733"; description = "Hatchet health base URL (/live, /ready)."; };
      tokenFile = mkOption { type = secretPath; default = null; example = "/run/secrets/hatchet-token"; description = "File holding the Hatchet API token (LoadCredential)."; };
      namespace = mkOption { type = types.nullOr types.str; default = null; description = "Prefix of Hatchet workflow names."; };
      workerConcurrency = mkOption { type = types.ints.between 1 1024; default = 10; description = "Jobs the worker runs at once (its --concurrency)."; };
    };

    playwright = {
      host = mkOption { type = types.str; default = "127.0.0.1"; description = "Playwright server host (the forward on Linux)."; };
      port = mkOption { type = types.port; default = 9323; description = "Playwright server port."; };
      wsPathFile = mkOption { type = secretPath; default = null; example = "/run/secrets/playwright-ws-path"; description = "File holding the WebSocket path secret (LoadCredential)."; };
    };

    artifacts = {
      outDir = mkOption { type = types.strMatching "/.*"; default = "${stateDir}/artifacts"; description = "Artifact root; made writable for the units when outside ${stateDir}."; };
      retentionDays = mkOption { type = types.ints.unsigned; default = 7; description = "Days before `artifacts gc` sweeps a job's artifacts."; };
    };

    worker = {
      enable = mkEnableOption "the win-automation-worker unit (`win-automation worker`)";
      metrics = mkOption { type = types.bool; default = false; description = "Emit metric=... lines."; };
      metricsInterval = mkOption { type = duration; default = "30s"; description = "Interval between metric lines."; };
      metricsPath = mkOption {
        type = types.nullOr (types.strMatching "/.*");
        default = null;
        example = "${logsDir}/metrics.log";
        description = "Append metric lines to this file (null: stdout, i.e. the journal).";
      };
    };

    supervisor = {
      enable = mkEnableOption "the win-automation-supervisor unit (`win-automation supervisor run`)";
      interval = mkOption { type = duration; default = "30s"; description = "Time between supervisor passes."; };
      debug = mkOption { type = types.bool; default = false; description = "Run the supervisor with --debug (a log line per pass)."; };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = !(cfg.settings ? hatchet && cfg.settings.hatchet ? token)
          && !(cfg.settings ? playwright && cfg.settings.playwright ? ws_path);
        message = "services.win-automation.settings must not hold secrets (it is in the Nix store): use hatchet.tokenFile / playwright.wsPathFile.";
      }
      {
        assertion = lib.all (c: !lib.hasPrefix "/nix/store/" c.source) credentials;
        message = "services.win-automation: secret files must live outside the Nix store.";
      }
      {
        assertion = cfg.windows.knownHosts == null
          || !(under "/home" cfg.windows.knownHosts || under "/root" cfg.windows.knownHosts);
        message = "services.win-automation.windows.knownHosts: the units run with ProtectHome=true and cannot read ${toString cfg.windows.knownHosts}.";
      }
    ];

    users.users.${user} = {
      isSystemUser = true;
      group = user;
      home = stateDir;
      description = "win-automation service user";
    };
    users.groups.${user} = { };

    environment.systemPackages = [ cfg.package ];
    # The same config for an admin's `win-automation --config /etc/win-automation/config.json doctor`.
    environment.etc."win-automation/config.json".source = configFile;

    systemd.tmpfiles.rules = optionals (!under stateDir cfg.artifacts.outDir) [
      "d ${cfg.artifacts.outDir} 0750 ${user} ${user} -"
    ];

    systemd.services = optionalAttrs cfg.worker.enable {
      win-automation-worker = unit "win-automation job worker"
        "${exe} worker --concurrency ${toString cfg.hatchet.workerConcurrency}";
    } // optionalAttrs cfg.supervisor.enable {
      win-automation-supervisor = unit "win-automation supervisor (checks and repairs the Windows VM)"
        ("${exe} supervisor run" + lib.optionalString cfg.supervisor.debug " --debug");
    };
  };
}
