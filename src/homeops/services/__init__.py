"""The services domain: docker-compose services and their restic backups (seed 002, ``svc``)."""
