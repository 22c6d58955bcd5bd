"""Captured output kept as bytes and decoded on request, shared by every command result.

A remote Windows command may answer in a code page, a local tool in UTF-8, and a binary
stream in neither: results keep what was written, and the reader picks the decoding.
"""

from __future__ import annotations


class CapturedOutput:
    """Text views of a result's ``stdout``/``stderr`` bytes (mixed into frozen dataclasses)."""

    stdout: bytes
    stderr: bytes

    @property
    def stdout_text(self) -> str:
        """stdout decoded as UTF-8, undecodable bytes as U+FFFD."""
        return self.text()

    @property
    def stderr_text(self) -> str:
        """stderr decoded as UTF-8, undecodable bytes as U+FFFD."""
        return self.stderr.decode("utf-8", "replace")

    def text(self, encoding: str = "utf-8", errors: str = "replace") -> str:
        """stdout decoded with ``encoding`` (e.g. a Windows code page) and ``errors``."""
        return self.stdout.decode(encoding, errors)
