"""A recording Runner with scripted answers, for domain tests that assert argv at the seam.

Imitates the Runner contract of ``homeops.core.runner`` (``Runner`` and ``RawRunner``): the
same call signature, a ``CommandResult`` back, ``check=True`` raising ``CommandFailed``
through ``CommandResult.check`` exactly as ``LocalRunner``/``SshRunner`` do, a str stdin sent
as UTF-8, and a scripted exception (``HomeopsTimeout``, ``SshUnavailable``) raised as the real
runners raise it. It runs nothing. Like nixos-rebuild-ng's tests, a domain test scripts the
commands it expects and then asserts the exact argv list in :attr:`FakeRunner.calls`.

A call nothing was scripted for raises :class:`UnexpectedCall` and is also kept in
:attr:`FakeRunner.unexpected`, so that :meth:`FakeRunner.assert_done` still fails the test if
the code under test swallowed the exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from homeops.core.runner import CommandResult, RawRunner


class UnexpectedCall(AssertionError):
    """The code under test ran a command the test did not script."""


@dataclass(frozen=True)
class Call:
    """One recorded call: ``raw`` for ``run_raw`` (then ``argv`` is the one-word line)."""

    argv: tuple[str, ...]
    timeout: float
    stdin: bytes | None
    check: bool
    raw: bool = False


@dataclass
class Script:
    """One scripted answer; ``times=None`` answers any number of calls."""

    argv: tuple[str, ...]
    prefix: bool
    raw: bool
    stdout: bytes
    stderr: bytes
    exit_status: int
    raises: BaseException | None
    times: int | None
    used: int = 0

    def matches(self, argv: tuple[str, ...], raw: bool) -> bool:
        if raw != self.raw or (self.times is not None and self.used >= self.times):
            return False
        return argv[: len(self.argv)] == self.argv if self.prefix else argv == self.argv


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class FakeRunner:
    """A scripted, recording :class:`~homeops.core.runner.RawRunner`.

    ``host`` is what results carry as their destination (None: a local runner's results).
    Scripts are tried in the order they were added; the first that matches answers.
    """

    def __init__(self, *, host: str | None = None) -> None:
        self.host = host
        self.calls: list[Call] = []
        self.unexpected: list[Call] = []
        self._scripts: list[Script] = []

    def expect(
        self,
        argv: Sequence[str],
        *,
        stdout: bytes | str = b"",
        stderr: bytes | str = b"",
        exit_status: int = 0,
        raises: BaseException | None = None,
        prefix: bool = False,
        times: int | None = 1,
    ) -> None:
        """Answer a call whose argv is ``argv`` (or starts with it, with ``prefix``)."""
        self._add(argv, prefix, False, stdout, stderr, exit_status, raises, times)

    def expect_raw(
        self,
        command: str,
        *,
        stdout: bytes | str = b"",
        stderr: bytes | str = b"",
        exit_status: int = 0,
        raises: BaseException | None = None,
        times: int | None = 1,
    ) -> None:
        """Answer a ``run_raw`` call of exactly ``command``."""
        self._add((command,), False, True, stdout, stderr, exit_status, raises, times)

    def _add(
        self,
        argv: Sequence[str],
        prefix: bool,
        raw: bool,
        stdout: bytes | str,
        stderr: bytes | str,
        exit_status: int,
        raises: BaseException | None,
        times: int | None,
    ) -> None:
        if isinstance(argv, str):
            raise TypeError("script an argv list, not a string")
        script = Script(
            tuple(argv), prefix, raw, _bytes(stdout), _bytes(stderr), exit_status, raises, times
        )
        self._scripts.append(script)

    @property
    def argvs(self) -> list[list[str]]:
        """Every recorded argv, in call order (the usual thing to assert)."""
        return [list(c.argv) for c in self.calls]

    def assert_done(self) -> None:
        """Fail if any call was unexpected or a scripted answer with a count went unused."""
        if self.unexpected:
            raise UnexpectedCall(f"unexpected calls: {[list(c.argv) for c in self.unexpected]}")
        left = [list(s.argv) for s in self._scripts if s.times is not None and s.used < s.times]
        if left:
            raise AssertionError(f"scripted commands never run: {left}")

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: bytes | str | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Record the call and answer it from the scripts."""
        if isinstance(argv, str):
            raise TypeError("argv must be a list of words, not a string (use run_raw for a line)")
        if not argv:
            raise ValueError("argv must not be empty")
        return self._answer(Call(tuple(argv), timeout, _stdin(stdin), check), check)

    async def run_raw(
        self,
        command: str,
        *,
        timeout: float,
        stdin: bytes | str | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Record a raw command line and answer it from the ``expect_raw`` scripts."""
        if not command.strip():
            raise ValueError("command must not be empty")
        return self._answer(Call((command,), timeout, _stdin(stdin), check, raw=True), check)

    def _answer(self, call: Call, check: bool) -> CommandResult:
        self.calls.append(call)
        for script in self._scripts:
            if script.matches(call.argv, call.raw):
                script.used += 1
                if script.raises is not None:
                    raise script.raises
                result = CommandResult(
                    call.argv, script.exit_status, script.stdout, script.stderr, 0.0, self.host
                )
                return result.check() if check else result
        self.unexpected.append(call)
        kind = "run_raw" if call.raw else "run"
        raise UnexpectedCall(f"unexpected {kind} call: {list(call.argv)}")


def _stdin(stdin: bytes | str | None) -> bytes | None:
    return None if stdin is None else _bytes(stdin)


def _conforms(fake: FakeRunner) -> RawRunner:
    # mypy checks here that the fake keeps the real protocol's signatures.
    return fake
