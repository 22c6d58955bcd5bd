"""Stand-ins for peers that cannot run on these machines (Windows/PowerShell, the Aloha apps,
a Hatchet engine, systemd, the docker engine, nixos-rebuild). Each fake names the contract in
shared/CONTRACTS.md it imitates and is driven through the same seam as the real peer. The core
needs none: its tests run real sshd, SQLite, subprocesses and nix-instantiate."""
