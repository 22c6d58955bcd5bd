"""Health checks, a circuit breaker, and the self-repairing supervisor loop.

Checks run concurrently, each under its own timeout, and are reported in the order they
were given (seed 001's check order: SSH, Aloha server, Aloha client, Hatchet, Playwright).
The supervisor remediates failed checks and confirms by re-running them; after three
consecutive failed passes the breaker opens for 60 s and remediation pauses, while checks
keep running and being reported. The old Go supervisor died when a 10 s command timeout
hit its long-running loop, so the loop here has no overall deadline: only each probe and
each remediation does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Final, assert_never

from homeops.core.asyncutil import Sleep, sleep_or_stop
from homeops.core.errors import ExitCode, HomeopsError, UsageError
from homeops.core.logging import get_logger, quieted

_log = get_logger("core.health")

Clock = Callable[[], float]
Remediation = Callable[[], Awaitable[None]]

FAILPOINT_DETAIL: Final = "failpoint"
BREAKER_OPEN_NOTE: Final = "breaker open, remediation skipped"
_EMPTY: Final[Mapping[str, object]] = MappingProxyType({})


class Status(StrEnum):
    """Outcome of one check."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckOutcome:
    """What a probe returns: a status, a one-line detail and optional structured data."""

    status: Status
    detail: str = ""
    data: Mapping[str, object] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class Check:
    """A named probe with its own timeout; ``group`` is the domain it belongs to.

    ``repair_needs`` names checks its remediation works through (a repair over SSH needs
    the ``ssh`` check): when one of them failed in the same pass, the supervisor does not
    run the repair, which could only fail after its own connect retries.
    """

    name: str
    probe: Callable[[], Awaitable[CheckOutcome]]
    timeout: float = 5.0
    group: str = "core"
    repair_needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    """A finished check as reported."""

    name: str
    group: str
    status: Status
    detail: str
    duration_ms: float
    data: Mapping[str, object] = field(default_factory=lambda: _EMPTY)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _error_detail(exc: Exception) -> str:
    # Our own errors are written for users; foreign ones need their type to make sense
    # ("ConnectionRefusedError: ..." says more than "[Errno 111] Connect call failed").
    if isinstance(exc, HomeopsError):
        return _one_line(exc.message)
    text = _one_line(str(exc))
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


async def tcp_port_open(host: str, port: int, *, timeout: float) -> bool:
    """Whether a TCP connect to ``host:port`` succeeds within ``timeout`` (then closed)."""
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def wait_listening(host: str, port: int, *, wait_s: float, poll_s: float = 0.25) -> bool:
    """Whether ``host:port`` accepts a TCP connect within ``wait_s``: polled, bounded in count
    and time. For a program just started by something that returns at once (Windows'
    ``Start-Process``, ``Start-ScheduledTask``) before it listens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    for _ in range(max(1, int(wait_s / poll_s) + 1)):
        left = deadline - loop.time()
        if await tcp_port_open(host, port, timeout=max(0.05, min(3.0, left))):
            return True
        if loop.time() >= deadline:
            break
        await asyncio.sleep(poll_s)
    return False


def validate_failpoint(checks: Sequence[Check], failpoint: str | None) -> None:
    """:class:`UsageError` listing valid names unless ``failpoint`` is None or a check name."""
    if failpoint is None:
        return
    names = [c.name for c in checks]
    if failpoint not in names:
        raise UsageError(
            f"unknown failpoint {failpoint!r} (valid: {', '.join(names) or 'no checks'})"
        )


def _validate_names(checks: Sequence[Check]) -> None:
    seen: set[str] = set()
    for check in checks:
        if check.name in seen:
            raise UsageError(f"duplicate check name {check.name!r}")
        seen.add(check.name)


async def _run_one(check: Check, failpoint: str | None, clock: Clock) -> CheckResult:
    start = clock()

    def result(status: Status, detail: str, data: Mapping[str, object] = _EMPTY) -> CheckResult:
        elapsed = (clock() - start) * 1000.0
        return CheckResult(check.name, check.group, status, detail, elapsed, data)

    if check.name == failpoint:
        return result(Status.FAIL, FAILPOINT_DETAIL)
    try:
        async with asyncio.timeout(check.timeout):
            outcome = await check.probe()
    except TimeoutError:
        return result(Status.FAIL, f"timed out after {check.timeout:g}s")
    except Exception as exc:
        # A probe's failure is the finding, not a crash of the whole report.
        return result(Status.FAIL, _error_detail(exc))
    if not isinstance(outcome, CheckOutcome):
        return result(Status.FAIL, f"probe returned {type(outcome).__name__}, not CheckOutcome")
    return result(outcome.status, _one_line(outcome.detail), MappingProxyType(dict(outcome.data)))


async def run_checks(
    checks: Sequence[Check], *, failpoint: str | None = None, clock: Clock = time.monotonic
) -> list[CheckResult]:
    """Run ``checks`` concurrently; results come back in the order given.

    A timed-out or raising probe is a FAIL; ``failpoint`` forces that check to FAIL
    without running it (an unknown name is a :class:`UsageError`).
    """
    _validate_names(checks)
    validate_failpoint(checks, failpoint)
    results = await asyncio.gather(*(_run_one(c, failpoint, clock) for c in checks))
    for r in results:
        if r.status is Status.FAIL:
            _log.debug("check", "check failed", check=r.name, err=r.detail)
    return list(results)


def _format_duration(ms: float) -> str:
    return f"{ms:.0f}ms" if ms < 10_000 else f"{ms / 1000:.1f}s"


def render_table(results: Sequence[CheckResult]) -> str:
    """Plain aligned columns (check, status, time, detail) for stdout; no colour codes."""
    rows = [("CHECK", "STATUS", "TIME", "DETAIL")]
    rows.extend(
        (r.name, str(r.status), _format_duration(r.duration_ms), _one_line(r.detail))
        for r in results
    )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]]
        ).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def results_to_json(results: Sequence[CheckResult]) -> list[dict[str, object]]:
    """Results as JSON-ready dicts, in order."""
    return [
        {
            "name": r.name,
            "group": r.group,
            "status": str(r.status),
            "detail": r.detail,
            "duration_ms": round(r.duration_ms, 1),
            "data": dict(r.data),
        }
        for r in results
    ]


def exit_code_for(results: Sequence[CheckResult]) -> ExitCode:
    """UNAVAILABLE (3) if any check failed, else OK; WARN and SKIP do not fail."""
    if any(r.status is Status.FAIL for r in results):
        return ExitCode.UNAVAILABLE
    return ExitCode.OK


# -- circuit breaker ----------------------------------------------------------------------


class BreakerState(StrEnum):
    """Circuit breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops remediation after ``threshold`` consecutive failures, for ``cooldown_s``.

    closed: allowed; failures count up and the threshold opens it. open: refused until the
    cooldown elapses, then half-open and allowed once. half-open: a success closes it, a
    failure reopens it with a fresh cooldown. A success in any state closes and resets it
    (seed: "resets on successful pass"). Failures while open do not extend the cooldown,
    or a supervisor passing more often than the cooldown would never get to retry.
    """

    def __init__(
        self, threshold: int = 3, cooldown_s: float = 60.0, clock: Clock = time.monotonic
    ) -> None:
        if threshold < 1:
            raise UsageError(f"breaker threshold must be >= 1, got {threshold}")
        if cooldown_s < 0:
            raise UsageError(f"breaker cooldown must be >= 0, got {cooldown_s:g}s")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_taken = False

    @property
    def state(self) -> BreakerState:
        """Current state (an open breaker past its cooldown still reads open until allow())."""
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures recorded since the last success."""
        return self._failures

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._trial_taken = False
        _log.warn("breaker", "circuit breaker opened", failures=self._failures)

    def allow(self) -> bool:
        """Whether an action may run now."""
        match self._state:
            case BreakerState.CLOSED:
                return True
            case BreakerState.OPEN:
                if self._clock() - self._opened_at < self.cooldown_s:
                    return False
                self._state = BreakerState.HALF_OPEN
                self._trial_taken = True
                _log.info("breaker", "circuit breaker half-open, allowing one trial")
                return True
            case BreakerState.HALF_OPEN:
                # Exactly one trial until its result is recorded.
                if self._trial_taken:
                    return False
                self._trial_taken = True
                return True
            case _:
                assert_never(self._state)

    def record(self, success: bool) -> None:
        """Feed the result of an attempt (a supervisor pass) into the state machine."""
        if success:
            if self._state is not BreakerState.CLOSED:
                _log.info("breaker", "circuit breaker closed")
            self._state = BreakerState.CLOSED
            self._failures = 0
            return
        self._failures += 1
        match self._state:
            case BreakerState.CLOSED:
                if self._failures >= self.threshold:
                    self._open()
            case BreakerState.HALF_OPEN:
                self._open()
            case BreakerState.OPEN:
                pass
            case _:
                assert_never(self._state)


# -- supervisor ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PassReport:
    """One supervisor pass: final results (after confirmation re-runs) and what was done."""

    results: tuple[CheckResult, ...]
    remediated: tuple[str, ...]
    remediation_failed: tuple[str, ...]
    remediation_skipped: tuple[str, ...]
    breaker_state: BreakerState
    ok: bool
    # Whether this pass differs from the one before (what fails, the breaker, a repair):
    # a long-running supervisor reports changes, not ticks.
    changed: bool = True


def render_pass(report: PassReport) -> str:
    """The check table plus one summary line (breaker state, what was repaired)."""
    summary = [f"breaker={report.breaker_state}"]
    if report.remediated:
        summary.append("remediated=" + ",".join(report.remediated))
    if report.remediation_failed:
        summary.append("remediation_failed=" + ",".join(report.remediation_failed))
    if report.remediation_skipped:
        summary.append("remediation_skipped=" + ",".join(report.remediation_skipped))
    summary.append("ok" if report.ok else "not ok")
    return render_table(report.results) + "\n" + " ".join(summary)


def pass_to_json(report: PassReport) -> dict[str, object]:
    """A pass report as a JSON-ready dict."""
    return {
        "ok": report.ok,
        "breaker_state": str(report.breaker_state),
        "remediated": list(report.remediated),
        "remediation_failed": list(report.remediation_failed),
        "remediation_skipped": list(report.remediation_skipped),
        "checks": results_to_json(report.results),
    }


class Supervisor:
    """Runs checks every ``interval_s``, remediates failures, and stops when told."""

    def __init__(
        self,
        checks: Sequence[Check],
        remediations: Mapping[str, Remediation],
        *,
        interval_s: float = 30.0,
        breaker: CircuitBreaker | None = None,
        failpoint: str | None = None,
        remediation_timeout_s: float = 120.0,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        on_pass: Callable[[PassReport], None] | None = None,
    ) -> None:
        _validate_names(checks)
        validate_failpoint(checks, failpoint)
        names = {c.name for c in checks}
        unknown = sorted(set(remediations) - names)
        if unknown:
            raise UsageError(f"remediation for unknown check {unknown[0]!r}")
        if interval_s <= 0:
            raise UsageError(f"supervisor interval must be positive, got {interval_s:g}s")
        self.checks = tuple(checks)
        self.remediations = dict(remediations)
        self.interval_s = interval_s
        self.breaker = breaker if breaker is not None else CircuitBreaker(clock=clock)
        self.failpoint = failpoint
        self.remediation_timeout_s = remediation_timeout_s
        self._sleep = sleep
        self._clock = clock
        self._on_pass = on_pass
        self._last: tuple[object, ...] | None = None

    async def _remediate(self, check: Check) -> bool:
        """Run the remediation of ``check``; False when it raised or timed out."""
        started = self._clock()
        try:
            async with asyncio.timeout(self.remediation_timeout_s):
                await self.remediations[check.name]()
        except TimeoutError:
            _log.error(
                "remediate",
                "remediation timed out",
                check=check.name,
                err=f"timed out after {self.remediation_timeout_s:g}s",
            )
            return False
        except Exception as exc:
            # A broken remediation must never end the supervisor loop.
            _log.error("remediate", "remediation failed", check=check.name, err=_error_detail(exc))
            return False
        _log.info(
            "remediate",
            "remediation ran",
            check=check.name,
            duration_ms=(self._clock() - started) * 1000.0,
        )
        return True

    async def run_once(self) -> PassReport:
        """One pass: check, remediate what failed (breaker permitting), confirm, record."""
        # The probes log at debug: their verdicts are this pass's report, logged on change.
        with quieted():
            results = await run_checks(self.checks, failpoint=self.failpoint, clock=self._clock)
        failed_now = {r.name for r in results if r.status is Status.FAIL}
        failing: list[Check] = []
        skipped: list[str] = []
        for check, result in zip(self.checks, results, strict=True):
            if result.status is not Status.FAIL or check.name not in self.remediations:
                continue
            blocking = [n for n in check.repair_needs if n in failed_now]
            if blocking:
                # Its repair goes through what is down: say so instead of trying.
                skipped.append(check.name)
                i = self.checks.index(check)
                note = f"remediation skipped: needs {', '.join(blocking)}"
                results[i] = replace(result, detail=f"{result.detail} ({note})")
            else:
                failing.append(check)
        remediated: list[str] = []
        failed: list[str] = []
        # One allow() per pass: the whole remediation round is the half-open trial.
        if failing and self.breaker.allow():
            for check in failing:
                ran = await self._remediate(check)
                # The failpoint was validated against every check; here only this one runs.
                forced = self.failpoint if self.failpoint == check.name else None
                with quieted():
                    (confirmed,) = await run_checks([check], failpoint=forced, clock=self._clock)
                results[self.checks.index(check)] = confirmed
                if ran and confirmed.status is not Status.FAIL:
                    remediated.append(check.name)
                else:
                    failed.append(check.name)
        elif failing:
            skipped.extend(c.name for c in failing)
            for check in failing:
                i = self.checks.index(check)
                results[i] = replace(
                    results[i], detail=f"{results[i].detail} ({BREAKER_OPEN_NOTE})"
                )
        # Same rule as the exit code: WARN and SKIP (say, Hatchet not configured) are not
        # failures, or a permanently skipped check would keep the breaker counting.
        ok = exit_code_for(results) is ExitCode.OK
        self.breaker.record(ok)
        failing_now = tuple(r.name for r in results if r.status is Status.FAIL)
        signature = (ok, failing_now, self.breaker.state)
        changed = signature != self._last or bool(remediated)
        self._last = signature
        report = PassReport(
            results=tuple(results),
            remediated=tuple(remediated),
            remediation_failed=tuple(failed),
            remediation_skipped=tuple(skipped),
            breaker_state=self.breaker.state,
            ok=ok,
            changed=changed,
        )
        # One line per change of state (or repair), not per tick; every pass at debug.
        level = ("info" if ok else "warn") if changed else "debug"
        _log.log(
            level,
            "pass",
            "supervisor pass done",
            ok=ok,
            failed=",".join(r.name for r in results if r.status is Status.FAIL) or None,
            remediated=",".join(remediated) or None,
            breaker=str(report.breaker_state),
        )
        if self._on_pass is not None:
            self._on_pass(report)
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Pass every ``interval_s`` until ``stop`` is set; no overall timeout, never dies."""
        _log.info("run", "supervisor started", interval_s=self.interval_s)
        while not stop.is_set():
            one_pass = asyncio.ensure_future(self.run_once())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({one_pass, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Also reached when run() itself is cancelled: leave no task behind.
                for task in (one_pass, stopper):
                    if not task.done():
                        task.cancel()
                for task in (one_pass, stopper):
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({task})
            if one_pass.cancelled():
                # Stop arrived mid-pass: its probes and remediations were cancelled.
                break
            exc = one_pass.exception()
            if exc is not None:
                _log.error("run", "supervisor pass crashed; continuing", err=repr(exc))
            if await sleep_or_stop(self._sleep, self.interval_s, stop):
                break
        _log.info("run", "supervisor stopped")
