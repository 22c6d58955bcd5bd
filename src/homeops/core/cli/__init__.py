"""The core's command groups (doctor, config, jobs, artifacts) and helpers every domain CLI uses.

Modules here import only typer and the standard library at import time: ``homeops --help``
must not pay for pydantic, asyncssh or httpx. Heavy imports happen inside command bodies.
"""
