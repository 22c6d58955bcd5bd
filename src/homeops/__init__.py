"""homeops: one toolkit that runs a NixOS homelab end to end."""

__version__ = "0.1.0"
