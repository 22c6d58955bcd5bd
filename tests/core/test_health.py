"""Health checks, the circuit breaker state machine, and the supervisor loop."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable

import pytest

from homeops.core.errors import DependencyUnavailable, ExitCode, UsageError
from homeops.core.health import (
    BreakerState,
    Check,
    CheckOutcome,
    CheckResult,
    CircuitBreaker,
    PassReport,
    Status,
    Supervisor,
    exit_code_for,
    pass_to_json,
    render_pass,
    render_table,
    results_to_json,
    run_checks,
)

Probe = Callable[[], Awaitable[CheckOutcome]]


def const(status: Status, detail: str = "", delay: float = 0.0) -> Probe:
    async def probe() -> CheckOutcome:
        if delay:
            await asyncio.sleep(delay)
        return CheckOutcome(status, detail)

    return probe


def raising(exc: Exception) -> Probe:
    async def probe() -> CheckOutcome:
        raise exc

    return probe


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- run_checks ---------------------------------------------------------------------------


async def test_results_keep_given_order_despite_completion_order() -> None:
    finished: list[str] = []

    def tracked(name: str, delay: float) -> Probe:
        async def probe() -> CheckOutcome:
            await asyncio.sleep(delay)
            finished.append(name)
            return CheckOutcome(Status.OK, name)

        return probe

    checks = [
        Check("ssh", tracked("ssh", 0.15)),
        Check("aloha_server", tracked("aloha_server", 0.0)),
        Check("aloha_client", tracked("aloha_client", 0.08)),
    ]
    results = await run_checks(checks)
    assert finished == ["aloha_server", "aloha_client", "ssh"]
    assert [r.name for r in results] == ["ssh", "aloha_server", "aloha_client"]
    assert [r.detail for r in results] == ["ssh", "aloha_server", "aloha_client"]


async def test_checks_run_concurrently() -> None:
    # Each probe waits until all three have started: only a concurrent runner can pass
    # (a sequential one times the first probe out), with no wall-clock bound to flake on.
    started = 0
    everyone_in = asyncio.Event()

    def rendezvous(name: str):
        async def probe() -> CheckOutcome:
            nonlocal started
            started += 1
            if started == 3:
                everyone_in.set()
            await everyone_in.wait()
            return CheckOutcome(Status.OK, name)

        return probe

    checks = [Check(f"c{i}", rendezvous(f"c{i}"), timeout=10) for i in range(3)]
    results = await run_checks(checks)
    assert [r.status for r in results] == [Status.OK] * 3
    assert [r.detail for r in results] == ["c0", "c1", "c2"]


async def test_timeout_is_fail() -> None:
    results = await run_checks(
        [
            Check("slow", const(Status.OK, delay=10), timeout=0.05),
            Check("fast", const(Status.OK, "fine")),
        ]
    )
    assert results[0].status is Status.FAIL
    assert results[0].detail == "timed out after 0.05s"
    assert results[1].status is Status.OK


@pytest.mark.parametrize(
    ("exc", "detail"),
    [
        pytest.param(
            DependencyUnavailable("aloha: connection refused"),
            "aloha: connection refused",
            id="homeops",
        ),
        pytest.param(ValueError("bad\nthing  here"), "ValueError: bad thing here", id="multiline"),
        pytest.param(RuntimeError(), "RuntimeError", id="no-message"),
        pytest.param(
            ConnectionRefusedError(111, "refused"),
            "ConnectionRefusedError: [Errno 111] refused",
            id="oserror",
        ),
    ],
)
async def test_raising_probe_is_fail(exc: Exception, detail: str) -> None:
    (result,) = await run_checks([Check("x", raising(exc))])
    assert result.status is Status.FAIL
    assert result.detail == detail


async def test_probe_returning_wrong_type_is_fail() -> None:
    async def probe() -> CheckOutcome:
        return "ok"  # type: ignore[return-value]

    (result,) = await run_checks([Check("x", probe)])
    assert result.status is Status.FAIL
    assert "not CheckOutcome" in result.detail


async def test_outcome_data_is_kept() -> None:
    async def probe() -> CheckOutcome:
        return CheckOutcome(Status.WARN, "old", {"version": "1.2"})

    (result,) = await run_checks([Check("x", probe, group="windows")])
    assert (result.status, result.group, dict(result.data)) == (
        Status.WARN,
        "windows",
        {"version": "1.2"},
    )


async def test_failpoint_forces_fail_without_running_probe() -> None:
    called: list[str] = []

    async def probe() -> CheckOutcome:
        called.append("aloha_server")
        return CheckOutcome(Status.OK)

    results = await run_checks(
        [Check("ssh", const(Status.OK)), Check("aloha_server", probe)],
        failpoint="aloha_server",
    )
    assert [(r.name, r.status, r.detail) for r in results] == [
        ("ssh", Status.OK, ""),
        ("aloha_server", Status.FAIL, "failpoint"),
    ]
    assert called == []


async def test_unknown_failpoint_lists_valid_names() -> None:
    checks = [Check("ssh", const(Status.OK)), Check("aloha_server", const(Status.OK))]
    with pytest.raises(UsageError) as info:
        await run_checks(checks, failpoint="aloha")
    assert str(info.value) == "unknown failpoint 'aloha' (valid: ssh, aloha_server)"
    assert info.value.exit_code == ExitCode.USAGE


async def test_duplicate_check_names_refused() -> None:
    with pytest.raises(UsageError, match="duplicate"):
        await run_checks([Check("a", const(Status.OK)), Check("a", const(Status.OK))])


def result(name: str, status: Status, detail: str = "", ms: float = 1.0) -> CheckResult:
    return CheckResult(name, "core", status, detail, ms)


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        pytest.param([], ExitCode.OK, id="none"),
        pytest.param([Status.OK, Status.OK], ExitCode.OK, id="all-ok"),
        pytest.param([Status.OK, Status.WARN], ExitCode.OK, id="warn"),
        pytest.param([Status.SKIP, Status.OK], ExitCode.OK, id="skip"),
        pytest.param([Status.OK, Status.FAIL, Status.WARN], ExitCode.UNAVAILABLE, id="fail"),
    ],
)
def test_exit_code_for(statuses: list[Status], code: ExitCode) -> None:
    results = [result(f"c{i}", s) for i, s in enumerate(statuses)]
    assert exit_code_for(results) is code


def test_render_table_exact() -> None:
    table = render_table(
        [
            result("ssh", Status.OK, "OpenSSH_9.6", 12.4),
            result("aloha_server", Status.FAIL, "timed out\nafter 5s", 5003.0),
            result("playwright", Status.SKIP, "", 12345.0),
        ]
    )
    assert table == (
        "CHECK         STATUS  TIME    DETAIL\n"
        "ssh           ok      12ms    OpenSSH_9.6\n"
        "aloha_server  fail    5003ms  timed out after 5s\n"
        "playwright    skip    12.3s"
    )
    assert "\x1b" not in table


def test_results_to_json() -> None:
    r = CheckResult("ssh", "windows", Status.OK, "fine", 12.345, {"v": 1})
    assert results_to_json([r]) == [
        {
            "name": "ssh",
            "group": "windows",
            "status": "ok",
            "detail": "fine",
            "duration_ms": 12.3,
            "data": {"v": 1},
        }
    ]


# -- circuit breaker ----------------------------------------------------------------------

# Each step: (seconds to advance, action, expected allow() result or None, expected state).
Step = tuple[float, str, bool | None, BreakerState]
CL, OP, HO = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(
            [
                (0, "allow", True, CL),
                (0, "fail", None, CL),
                (0, "fail", None, CL),
                (0, "fail", None, OP),
            ],
            id="opens-after-3-consecutive",
        ),
        pytest.param(
            [
                (0, "fail", None, CL),
                (0, "fail", None, CL),
                (0, "ok", None, CL),
                (0, "fail", None, CL),
                (0, "fail", None, CL),
            ],
            id="success-resets-count",
        ),
        pytest.param(
            [(0, "fail", None, CL)] * 2
            + [(0, "fail", None, OP), (0, "allow", False, OP), (59.9, "allow", False, OP)],
            id="open-refuses-during-cooldown",
        ),
        pytest.param(
            [(0, "fail", None, CL)] * 2
            + [(0, "fail", None, OP), (60, "allow", True, HO), (0, "allow", False, HO)],
            id="half-open-allows-once",
        ),
        pytest.param(
            [(0, "fail", None, CL)] * 2
            + [
                (0, "fail", None, OP),
                (60, "allow", True, HO),
                (0, "ok", None, CL),
                (0, "allow", True, CL),
                (0, "fail", None, CL),
            ],
            id="half-open-success-closes-and-resets",
        ),
        pytest.param(
            [(0, "fail", None, CL)] * 2
            + [
                (0, "fail", None, OP),
                (60, "allow", True, HO),
                (0, "fail", None, OP),
                (59, "allow", False, OP),
                (1, "allow", True, HO),
            ],
            id="half-open-failure-reopens-with-fresh-cooldown",
        ),
        pytest.param(
            [(0, "fail", None, CL)] * 2
            + [(0, "fail", None, OP), (30, "fail", None, OP), (30, "allow", True, HO)],
            id="failures-while-open-do-not-extend-cooldown",
        ),
        pytest.param(
            [(0, "fail", None, CL)] * 2
            + [(0, "fail", None, OP), (10, "ok", None, CL), (0, "allow", True, CL)],
            id="success-while-open-closes",
        ),
    ],
)
def test_breaker_state_machine(steps: list[Step]) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, cooldown_s=60.0, clock=clock)
    assert breaker.state is CL
    for i, (advance, action, allowed, state) in enumerate(steps):
        clock.now += advance
        if action == "allow":
            assert breaker.allow() is allowed, f"step {i}"
        else:
            breaker.record(action == "ok")
        assert breaker.state is state, f"step {i}"


def test_breaker_rejects_bad_settings() -> None:
    with pytest.raises(UsageError):
        CircuitBreaker(threshold=0)
    with pytest.raises(UsageError):
        CircuitBreaker(cooldown_s=-1)


# -- supervisor ---------------------------------------------------------------------------


class Service:
    """A fake peer: a probe that fails while down and a remediation that may bring it up."""

    def __init__(self, *, up: bool = False, fixable: bool = True) -> None:
        self.up = up
        self.fixable = fixable
        self.probes = 0
        self.remediations = 0

    async def probe(self) -> CheckOutcome:
        self.probes += 1
        return CheckOutcome(Status.OK, "up") if self.up else CheckOutcome(Status.FAIL, "down")

    async def remediate(self) -> None:
        self.remediations += 1
        if self.fixable:
            self.up = True


def supervisor(
    svc: Service, clock: FakeClock, *, breaker: CircuitBreaker | None = None, **kw: object
) -> Supervisor:
    checks = [Check("ssh", const(Status.OK)), Check("aloha_server", svc.probe)]
    return Supervisor(
        checks,
        {"aloha_server": svc.remediate},
        breaker=breaker or CircuitBreaker(clock=clock),
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


async def test_supervisor_remediates_and_confirms() -> None:
    clock = FakeClock()
    svc = Service()
    sup = supervisor(svc, clock)
    report = await sup.run_once()
    assert svc.remediations == 1
    assert svc.probes == 2  # the check, then the confirmation
    assert report.remediated == ("aloha_server",)
    assert report.remediation_failed == ()
    assert report.ok
    assert [(r.name, r.status) for r in report.results] == [
        ("ssh", Status.OK),
        ("aloha_server", Status.OK),
    ]
    assert report.breaker_state is BreakerState.CLOSED


async def test_supervisor_healthy_pass_does_nothing() -> None:
    svc = Service(up=True)
    report = await supervisor(svc, FakeClock()).run_once()
    assert (svc.remediations, report.ok, report.remediated) == (0, True, ())


async def test_supervisor_reports_changes_not_ticks(log_stream: io.StringIO) -> None:
    svc = Service(up=True, fixable=False)
    sup = supervisor(svc, FakeClock())
    changes = []
    for up in (True, True, False, False, True, True):
        svc.up = up
        changes.append((await sup.run_once()).changed)
    # First pass, the fall, the recovery; repeats are quiet.
    assert changes == [True, False, True, False, True, False]
    lines = [ln for ln in log_stream.getvalue().splitlines() if "supervisor pass done" in ln]
    assert [("level=debug" in ln) for ln in lines] == [not c for c in changes]


async def test_failpoint_on_one_check_while_another_is_repaired() -> None:
    # The repaired check is confirmed alone: the failpoint (another check) must not be
    # re-validated against that one-check list.
    svc = Service()
    sup = supervisor(svc, FakeClock(), failpoint="ssh")
    report = await sup.run_once()
    assert report.remediated == ("aloha_server",)
    assert [(r.name, r.status) for r in report.results] == [
        ("ssh", Status.FAIL),
        ("aloha_server", Status.OK),
    ]


async def test_supervisor_warn_and_skip_do_not_fail_pass() -> None:
    checks = [Check("a", const(Status.WARN)), Check("b", const(Status.SKIP))]
    breaker = CircuitBreaker(threshold=1)
    report = await Supervisor(checks, {}, breaker=breaker).run_once()
    assert report.ok
    assert breaker.state is BreakerState.CLOSED


async def test_repair_is_not_tried_while_what_it_needs_is_down() -> None:
    ssh = Service()
    svc = Service()
    checks = [
        Check("ssh", ssh.probe),
        Check("aloha_server", svc.probe, repair_needs=("ssh",)),
        Check("hatchet", const(Status.FAIL, "no answer")),
    ]
    other = Service(fixable=False)
    remediations = {"aloha_server": svc.remediate, "hatchet": other.remediate}
    breaker = CircuitBreaker(clock=FakeClock())
    report = await Supervisor(checks, remediations, breaker=breaker).run_once()
    # The repair over SSH is skipped and says why; a repair that needs nothing still runs.
    assert (svc.remediations, other.remediations) == (0, 1)
    assert report.remediation_skipped == ("aloha_server",)
    assert report.remediation_failed == ("hatchet",)
    by_name = {r.name: r for r in report.results}
    assert by_name["aloha_server"].detail == "down (remediation skipped: needs ssh)"
    # Once ssh answers, the same repair runs and is confirmed.
    ssh.up = True
    again = await Supervisor(checks, remediations, breaker=breaker).run_once()
    assert again.remediated == ("aloha_server",) and svc.remediations == 1


async def test_supervisor_check_without_remediation_only_reported() -> None:
    checks = [Check("hatchet", const(Status.FAIL, "no answer"))]
    report = await Supervisor(checks, {}).run_once()
    assert not report.ok
    assert (report.remediated, report.remediation_failed, report.remediation_skipped) == (
        (),
        (),
        (),
    )


async def test_breaker_opens_then_skips_then_half_open_recovers() -> None:
    clock = FakeClock()
    svc = Service(fixable=False)
    sup = supervisor(svc, clock)
    for expected in (BreakerState.CLOSED, BreakerState.CLOSED, BreakerState.OPEN):
        report = await sup.run_once()
        assert report.remediation_failed == ("aloha_server",)
        assert report.breaker_state is expected
        clock.now += 30
    assert svc.remediations == 3

    # Open (30 s into the 60 s cooldown): checks still run, remediation is skipped.
    probes_before = svc.probes
    report = await sup.run_once()
    assert svc.remediations == 3
    assert svc.probes == probes_before + 1
    assert report.remediation_skipped == ("aloha_server",)
    assert report.results[1].status is Status.FAIL
    assert report.results[1].detail == "down (breaker open, remediation skipped)"
    assert "breaker open" in render_pass(report)
    assert report.breaker_state is BreakerState.OPEN

    # Cooldown elapsed: one trial remediation, which now works.
    clock.now += 30
    svc.fixable = True
    report = await sup.run_once()
    assert svc.remediations == 4
    assert report.remediated == ("aloha_server",)
    assert report.ok
    assert report.breaker_state is BreakerState.CLOSED


async def test_half_open_trial_failure_reopens() -> None:
    clock = FakeClock()
    svc = Service(fixable=False)
    sup = supervisor(svc, clock)
    for _ in range(3):
        await sup.run_once()
    clock.now += 60
    report = await sup.run_once()
    assert svc.remediations == 4
    assert report.breaker_state is BreakerState.OPEN
    clock.now += 59
    await sup.run_once()
    assert svc.remediations == 4


async def test_healthy_pass_while_open_closes_breaker() -> None:
    clock = FakeClock()
    svc = Service(fixable=False)
    sup = supervisor(svc, clock)
    for _ in range(3):
        await sup.run_once()
    assert sup.breaker.state is BreakerState.OPEN
    svc.up = True  # came back on its own
    report = await sup.run_once()
    assert report.ok
    assert report.breaker_state is BreakerState.CLOSED


async def test_failpoint_survives_remediation() -> None:
    clock = FakeClock()
    svc = Service()
    sup = supervisor(svc, clock, failpoint="aloha_server")
    report = await sup.run_once()
    assert svc.remediations == 1
    assert svc.probes == 0
    assert report.remediation_failed == ("aloha_server",)
    assert report.results[1].detail == "failpoint"
    assert not report.ok


def test_supervisor_rejects_unknown_names() -> None:
    svc = Service()
    with pytest.raises(UsageError, match="unknown failpoint 'nope'"):
        supervisor(svc, FakeClock(), failpoint="nope")
    with pytest.raises(UsageError, match="remediation for unknown check 'ghost'"):
        Supervisor([Check("a", const(Status.OK))], {"ghost": svc.remediate})


async def test_crashing_remediation_is_logged_not_fatal(log_stream: io.StringIO) -> None:
    async def boom() -> None:
        raise RuntimeError("firewall rule failed")

    checks = [Check("aloha_server", const(Status.FAIL, "down"))]
    sup = Supervisor(checks, {"aloha_server": boom})
    report = await sup.run_once()
    assert report.remediation_failed == ("aloha_server",)
    logs = log_stream.getvalue()
    assert "remediation failed" in logs
    assert "firewall rule failed" in logs


async def test_hanging_remediation_times_out() -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    checks = [Check("aloha_server", const(Status.FAIL, "down"))]
    sup = Supervisor(checks, {"aloha_server": hang}, remediation_timeout_s=0.05)
    report = await asyncio.wait_for(sup.run_once(), 2)
    assert report.remediation_failed == ("aloha_server",)


async def test_run_loops_with_fake_sleep_and_survives_crashes() -> None:
    clock = FakeClock()
    stop = asyncio.Event()
    sleeps: list[float] = []
    reports: list[PassReport] = []

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        clock.now += delay
        if len(sleeps) == 200:
            stop.set()
        await asyncio.sleep(0)

    async def boom() -> None:
        raise RuntimeError("remediation bug")

    def on_pass(report: PassReport) -> None:
        reports.append(report)
        if len(reports) == 2:
            raise RuntimeError("a broken callback must not end the loop either")

    checks = [Check("ssh", const(Status.OK)), Check("aloha_server", const(Status.FAIL, "down"))]
    sup = Supervisor(
        checks,
        {"aloha_server": boom},
        interval_s=30,
        sleep=fake_sleep,
        clock=clock,
        on_pass=on_pass,
    )
    await asyncio.wait_for(sup.run(stop), 10)
    # 200 passes, 100 simulated minutes: far past the old 10 s deadline that killed the loop.
    assert len(reports) == 200
    assert sleeps == [30] * 200
    assert all(not r.ok for r in reports)
    # Remediation ran until the breaker opened, then once per cooldown (every 2nd pass).
    assert reports[2].breaker_state is BreakerState.OPEN
    assert reports[3].remediation_skipped == ("aloha_server",)
    # Passes 0-2 before opening, then the half-open trial on every even pass from 4 to 198.
    assert sum(1 for r in reports if r.remediation_failed) == 3 + 98


async def test_run_stops_promptly_between_passes() -> None:
    stop = asyncio.Event()
    passes: list[PassReport] = []
    first = asyncio.Event()

    def on_pass(report: PassReport) -> None:
        passes.append(report)
        first.set()

    sup = Supervisor([Check("ssh", const(Status.OK))], {}, interval_s=3600, on_pass=on_pass)
    task = asyncio.create_task(sup.run(stop))
    await asyncio.wait_for(first.wait(), 1)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(passes) == 1


async def test_run_stops_promptly_mid_pass() -> None:
    stop = asyncio.Event()
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def stuck() -> CheckOutcome:
        started.set()
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return CheckOutcome(Status.OK)

    sup = Supervisor([Check("slow", stuck, timeout=200)], {}, interval_s=1)
    task = asyncio.create_task(sup.run(stop))
    await started.wait()
    stop.set()
    await asyncio.wait_for(task, 1)
    assert cancelled == [True]


async def test_run_returns_at_once_if_already_stopped() -> None:
    stop = asyncio.Event()
    stop.set()
    probe_calls: list[int] = []

    async def probe() -> CheckOutcome:
        probe_calls.append(1)
        return CheckOutcome(Status.OK)

    await asyncio.wait_for(Supervisor([Check("a", probe)], {}).run(stop), 1)
    assert probe_calls == []


async def test_pass_to_json() -> None:
    report = await supervisor(Service(), FakeClock()).run_once()
    doc = pass_to_json(report)
    assert doc["ok"] is True
    assert doc["breaker_state"] == "closed"
    assert doc["remediated"] == ["aloha_server"]
    assert [c["name"] for c in doc["checks"]] == ["ssh", "aloha_server"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("debug", [False, True], ids=["info", "debug"])
async def test_supervisor_probes_log_at_debug_so_a_steady_state_logs_once(debug: bool) -> None:
    import logging

    from homeops.core import logging as hlog

    stream = io.StringIO()
    hlog.configure(stream=stream, debug=debug)
    probe_log = hlog.get_logger("test.probe")
    library = logging.getLogger("asyncssh")

    async def noisy() -> CheckOutcome:
        probe_log.warn("connect", "retrying")
        probe_log.error("connect", "connection failed")
        library.warning("channel closed")  # a third-party line from inside the probe
        return CheckOutcome(Status.FAIL, "down")

    try:
        supervisor = Supervisor([Check("vm", noisy)], {}, clock=FakeClock())
        for _ in range(3):
            await supervisor.run_once()
        probe_log.warn("after", "outside the probes")
    finally:
        hlog.reset()
    lines = stream.getvalue().splitlines()
    passes = [line for line in lines if "supervisor pass done" in line]
    noise = [line for line in lines if "retrying" in line or "connection failed" in line]
    if debug:
        assert len(noise) == 6 and all(" level=debug " in line for line in noise), noise
        assert sum("channel closed" in line for line in lines) == 3
    else:
        assert noise == [] and "channel closed" not in stream.getvalue()
        # A pass is logged when the state changes: the first, and the breaker opening.
        assert len(passes) == 2, passes
        assert "breaker=closed" in passes[0] and "breaker=open" in passes[1]
    # Outside a supervisor pass a warning is a warning.
    assert any(" level=warn " in line and "outside the probes" in line for line in lines)
