"""One restic repository as `svc` uses it: its environment, its restic, and a run of restic
through the core's process seam with the outcome classified (services/restic.py).

Every flow that talks to restic (backup, restore, list-backups, init, check) goes through
:class:`Repo`: the password only ever reaches restic as ``RESTIC_PASSWORD_FILE``, the
version is asked once per process (0.14 and 0.17+ differ in exit codes and flags), and a
locked repository is retried for ``retry_lock_s`` on a restic too old to do it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from homeops.core.errors import ConfigError, HomeopsError, ToolMissing
from homeops.core.logging import get_logger
from homeops.services import restic as r
from homeops.services.settings import REPO_NAMES as REPO_NAMES  # re-exported

if TYPE_CHECKING:
    from homeops.core.process import ProcessResult
    from homeops.services.settings import Repository, SvcSettings

RepoName = Literal["local", "remote"]
# A repository location is one short line; restic reads no more either.
_LOCATION_MAX: Final = 4096
# A locked repository is asked again this often while --retry-lock lasts (restic < 0.16).
LOCK_RETRY_PAUSE_S: Final = 5.0

_log = get_logger("services.restic")


def repo_name(value: str) -> RepoName:
    """``local`` or ``remote`` from the command line; anything else is a usage error."""
    from homeops.core.errors import UsageError

    if value == "local":
        return "local"
    if value == "remote":
        return "remote"
    raise UsageError(f"repository must be 'local' or 'remote', got {value!r}")


@dataclass
class Repo:
    """A configured repository and how to run restic on it."""

    name: RepoName
    config: Repository
    program: str
    timeout_s: float
    retry_lock_s: float | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    source: str = "services.json"
    # Settings set by a variable: dotted key -> its name (errors name it, not the file).
    sources: Mapping[str, str] = field(default_factory=dict)
    _restic: r.Restic | None = None

    @classmethod
    def of(
        cls,
        settings: SvcSettings,
        name: RepoName,
        *,
        source: str = "services.json",
        sources: Mapping[str, str] | None = None,
        retry_lock_s: float | None = None,
    ) -> Repo:
        """Repository ``name`` of ``settings``; a ConfigError naming ``source`` (the config
        file) when it is not configured."""
        config: Repository = getattr(settings.repositories, name)
        where = f"repositories.{name}"
        if not config.configured:
            raise ConfigError(source, where, "no repository configured")
        if config.password_file is None:
            raise ConfigError(source, f"{where}.password_file", "required value missing")
        return cls(
            name,
            config,
            settings.tools.restic,
            settings.restic_timeout,
            retry_lock_s=retry_lock_s,
            source=source,
            sources=dict(sources or {}),
        )

    @property
    def location(self) -> str:
        """Where the repository is, as the user wrote it (for messages)."""
        if self.config.repository:
            return self.config.repository
        return f"repository_file {self.config.repository_file}"

    def _given_location(self) -> str | None:
        """The repository restic is given: the configured one, or the repository_file's
        text (what restic reads from it); None when that cannot be read."""
        if self.config.repository:
            return self.config.repository
        if self.config.repository_file is None:
            return None
        try:
            fd = os.open(self.config.repository_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, _LOCATION_MAX).decode("utf-8", "replace").strip() or None
        except OSError:
            return None
        finally:
            os.close(fd)

    def snapshot_files(self) -> list[str] | None:
        """The names of a local repository's snapshot files (restic keeps one file per
        snapshot, named by its id, in ``snapshots/``); None for a remote repository or one
        whose directory cannot be read. No key is needed: the names are not encrypted."""
        from homeops.services.retention import local_repository

        path = local_repository(self._given_location())
        if path is None:
            return None
        try:
            # Every entry, whatever its kind: anything that is not a recorded snapshot (a
            # FIFO, a stray file) must make forget run and meet it, never be skipped past.
            return os.listdir(os.path.join(path, "snapshots"))
        except OSError:
            return None

    def check_files(self) -> None:
        """Refuse a password file or repository_file that is not a regular file (a FIFO
        would block restic until restic_timeout, a device or directory is a mistake): a
        ConfigError (exit 2) naming the setting. A missing or unreadable file is left to
        restic, which names it. The file is never read here."""
        where = f"repositories.{self.name}"
        for key, path in (
            ("password_file", self.config.password_file),
            ("repository_file", self.config.repository_file),
        ):
            if path is None:
                continue
            problem = _not_regular(os.fspath(path))
            if problem is not None:
                dotted = f"{where}.{key}"
                raise ConfigError(self.sources.get(dotted, self.source), dotted, problem)

    def env(self) -> dict[str, str]:
        """The environment restic runs with: this repository and its password file."""
        assert self.config.password_file is not None  # checked in of()
        return r.restic_env(
            self.environ,
            password_file=self.config.password_file,
            repository=self.config.repository,
            repository_file=self.config.repository_file,
            cache_dir=self.config.cache_dir,
        )

    async def restic(self) -> r.Restic:
        """restic with its version known (asked once); the repository's files checked
        (:meth:`check_files`) every time, before anything runs."""
        self.check_files()
        if self._restic is None:
            from homeops.core import process

            done = await process.run([self.program, "version"], timeout=30, env=self.env())
            try:
                version = r.parse_version(done.stdout)
            except HomeopsError:
                version = None
            native = self.retry_lock_s is not None and version is not None and version >= r.V0_16
            retry = int(self.retry_lock_s) if native and self.retry_lock_s else None
            self._restic = r.Restic(
                program=self.program,
                version=version,
                retry_lock_s=retry,
                options=tuple(self.config.options),
            )
            _log.debug("version", "restic found", version=str(version), repo=self.name)
        return self._restic

    async def run(
        self,
        argv: list[str],
        *,
        on_stdout_line: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> tuple[ProcessResult, r.ResticVerdict]:
        """Run restic ``argv`` on this repository; the result and its classification.

        A ``locked`` outcome is tried again (every LOCK_RETRY_PAUSE_S) until ``retry_lock_s``
        has passed, when restic cannot do that itself.
        """
        from homeops.core import process

        restic = await self.restic()
        deadline = time.monotonic() + (self.retry_lock_s or 0)
        while True:
            try:
                done = await process.run(
                    argv,
                    timeout=timeout or self.timeout_s,
                    env=self.env(),
                    on_stdout_line=on_stdout_line,
                )
            except ToolMissing as exc:
                raise ToolMissing(f"restic: {exc}") from exc
            verdict = r.classify_run(
                done.returncode,
                done.stderr,
                version=restic.version,
                repo=self.name,
                location=self._given_location(),
                named=self.location,
            )
            locked = verdict.outcome is r.ResticOutcome.LOCKED
            if not locked or restic.native_retry_lock or time.monotonic() >= deadline:
                return done, verdict
            _log.info("lock", "repository locked; trying again", repo=self.name)
            await self.sleep(LOCK_RETRY_PAUSE_S)

    async def checked(self, argv: list[str], *, timeout: float | None = None) -> ProcessResult:
        """Run ``argv``; a failure raises its classified error (one line, with the fix)."""
        done, verdict = await self.run(argv, timeout=timeout)
        error = verdict.error()
        if error is not None:
            raise error
        return done


def _not_regular(path: str) -> str | None:
    """Why ``path`` is no regular file restic can read its one line from, or None (also
    when it does not exist: restic says so itself)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(found.st_mode):
        return f"not a regular file ({_kind(found.st_mode)}): {path}"
    # Opened without blocking and closed unread: a FIFO swapped in after the stat would
    # otherwise block here, and fstat tells what was really opened.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        opened = os.fstat(fd)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if not stat.S_ISREG(opened.st_mode):
        return f"not a regular file ({_kind(opened.st_mode)}): {path}"
    return None


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"
