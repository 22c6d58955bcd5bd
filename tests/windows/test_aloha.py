"""Aloha (CONTRACTS.md §2): the pure builders and parsers against recorded answers
(tests/windows/cases/aloha_*.json), and the flows against the fake apps over real loopback
HTTP (tests/fakes/aloha.py). The desktop-locked check goes through the FakeRunner seam; the
client's log is a local file behind the flow's ClientLog seam."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from homeops.core import http
from homeops.core.errors import (
    ExitCode,
    HomeopsTimeout,
    HttpUnavailable,
    OperationalError,
    UsageError,
)
from homeops.core.retry import RetryPolicy
from homeops.core.ssh.shell import encode_powershell
from homeops.windows import aloha
from homeops.windows import aloha_flow as flow
from homeops.windows import powershell as ps
from homeops.windows.settings import AlohaSection
from homeops.windows.vm import DesktopLocked
from tests.fakes.runner import FakeRunner
from tests.fixtures.common import free_port

CASES = Path(__file__).parent / "cases"
FAST = RetryPolicy(attempts=3, delays=(0.0,))
LOCK_PROBE = encode_powershell(ps.desktop_locked_script())


def _cases(name):
    return [pytest.param(c, id=c["id"]) for c in json.loads((CASES / name).read_text())]


# -- builders and parsers -------------------------------------------------------------------


def test_request_body_always_has_every_field_at_the_clients_defaults():
    request = aloha.run_task_request("open settings", "http://127.0.0.1:7887/")
    assert request.body() == {
        "task": "open settings",
        "selected_screen": 0,
        "trace_id": "example_trace",
        "server_url": "http://127.0.0.1:7887/generate_action",
        "max_steps": 50,
    }


def test_request_body_carries_given_values():
    request = aloha.run_task_request(
        "t", "http://10.0.2.2:7000/some/path", selected_screen=1, trace_id="hero", max_steps=3
    )
    assert request.body() == {
        "task": "t",
        "selected_screen": 1,
        "trace_id": "hero",
        "server_url": "http://10.0.2.2:7000/generate_action",
        "max_steps": 3,
    }


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"task": "  "}, "--task: the task text is empty", id="empty-task"),
        pytest.param({"max_steps": 0}, "--max-steps: must be 1-10000", id="max-steps-0"),
        pytest.param({"max_steps": 10001}, "--max-steps", id="max-steps-huge"),
        pytest.param({"selected_screen": -1}, "--selected-screen: must be 0-64", id="screen"),
        pytest.param({"trace_id": ""}, "--trace-id: empty", id="empty-trace"),
        pytest.param({"server_url": "ftp://x/"}, "not an http", id="server-url-scheme"),
    ],
)
def test_request_refuses_bad_values(kwargs, error):
    args = {"task": "t", "server_url": "http://127.0.0.1:7887/", **kwargs}
    task, server_url = args.pop("task"), args.pop("server_url")
    with pytest.raises(UsageError, match=error):
        aloha.run_task_request(task, server_url, **args)


@pytest.mark.parametrize("case", _cases("aloha_run_task.json"))
def test_parse_run_task(case):
    answer = aloha.parse_run_task(case["status"], case["body"])
    assert answer.outcome == aloha.RunTaskOutcome(case["outcome"])
    assert answer.status_code == case["status"]
    if "message" in case:
        assert answer.message == case["message"]
    assert answer.task == case.get("task")


@pytest.mark.parametrize("case", _cases("aloha_stop.json"))
def test_parse_stop(case):
    answer = aloha.parse_stop(case["status"], case["body"])
    assert answer.outcome == aloha.StopOutcome(case["outcome"])
    assert answer.message == case["message"]


@pytest.mark.parametrize("case", _cases("aloha_server_root.json"))
def test_parse_server_root(case):
    health = aloha.parse_server_root(case["status"], case["body"])
    assert health.ok is case["ok"]
    if "detail" in case:
        assert case["detail"] in health.detail


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(404, "as expected", id="404-the-clients-answer"),
        pytest.param(200, "where the Aloha client answers 404", id="200-says-so"),
        pytest.param(500, "HTTP 500 where", id="500-still-reachable"),
    ],
)
def test_client_root_any_answer_is_reachable_and_says_which(status, expected):
    health = aloha.classify_client_root(status)
    assert health.reachable is True
    assert expected in health.detail


@pytest.mark.parametrize("case", _cases("aloha_log_lines.json"))
def test_parse_log_line(case):
    event = aloha.parse_log_line(case["line"])
    if case["kind"] is None:
        assert event is None
        return
    assert event is not None
    assert event.kind == aloha.LogEventKind(case["kind"])
    if "msg_type" in case:
        assert event.msg_type == case["msg_type"]
    if "content" in case:
        assert event.content == case["content"]


def _events(*lines):
    return aloha.parse_log_lines("\n".join(lines))


def test_follow_run_ignores_a_finished_before_our_started():
    progress = aloha.follow_run(aloha.RunProgress(), _events("process_input thread finished."))
    assert progress == aloha.RunProgress()
    progress = aloha.follow_run(
        progress,
        _events(
            "process_input thread started.",
            "[loop_msg] type=text content=one",
            "Error during task processing: boom",
            "process_input thread finished.",
            "[loop_msg] type=text content=next run",
        ),
    )
    assert progress.started and progress.finished
    assert [s.content for s in progress.steps] == ["one"]
    assert progress.errors == ("boom",)


def test_decode_log_reads_utf16_from_powershell_redirection():
    text = "process_input thread started.\r\n"
    assert aloha.decode_log(text.encode("utf-16")) == text
    assert aloha.decode_log(b"\xef\xbb\xbf" + text.encode()) == text


def test_error_detail_of_a_long_page_is_one_bounded_line():
    detail = aloha.error_detail("<p>" + "word " * 500 + "</p>")
    assert "\n" not in detail and len(detail) <= 200


# -- flows against the fake apps ------------------------------------------------------------


@dataclass
class FileLog:
    """The flow's ClientLog seam over a local file (the VM's log is read over SFTP)."""

    path: Path
    reads: int = 0

    @property
    def where(self):
        return str(self.path)

    async def read(self, *, timeout):
        self.reads += 1
        return self.path.read_bytes()


@dataclass
class ScriptedLog:
    """A log whose successive reads return the given contents (the last one repeats)."""

    contents: list[bytes]
    where: str = "C:\\aloha\\client.log"
    reads: list[int] = field(default_factory=list)

    async def read(self, *, timeout):
        self.reads.append(1)
        index = min(len(self.reads), len(self.contents)) - 1
        return self.contents[index]


def _settings(apps, **extra) -> AlohaSection:
    return AlohaSection(server_url=apps.server.url + "/", client_url=apps.client.url, **extra)


def _unlocked(times=1) -> FakeRunner:
    runner = FakeRunner(host="vm")
    runner.expect_raw(LOCK_PROBE, stdout="unlocked\r\n", times=times)
    return runner


def _until(predicate, what, limit_s=10.0):
    # Bounded wait for the fake's background state; the assertion is on state, not on time.
    end = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


async def test_health_both_apps_ok(aloha_apps):
    async with http.make_client(timeout=5) as client:
        report = await flow.health(client, _settings(aloha_apps))
    assert report.ok
    assert report.server.detail == aloha.SERVER_MARKER
    assert report.client.status_code == 404 and "as expected" in report.client.detail


async def test_health_unreachable_apps_are_not_ok(aloha_apps):
    dead = f"http://127.0.0.1:{free_port()}"
    settings = AlohaSection(server_url=dead + "/", client_url=dead)
    async with http.make_client(timeout=2, connect_timeout=1) as client:
        report = await flow.health(client, settings, policy=FAST)
    assert not report.ok
    assert report.server.status_code is None and "unreachable" in report.server.detail
    assert report.client.reachable is False


async def test_health_the_client_on_the_servers_port_is_not_a_server(aloha_apps):
    settings = AlohaSection(server_url=aloha_apps.client.url, client_url=aloha_apps.client.url)
    async with http.make_client(timeout=5) as client:
        server = await flow.server_health(client, settings)
    assert not server.ok and "HTTP 404" in server.detail


async def test_server_503_twice_then_200_is_healthy(aloha_apps):
    aloha_apps.server.knobs.unavailable = 2
    async with http.make_client(timeout=5) as client:
        server = await flow.server_health(client, _settings(aloha_apps), policy=FAST)
    assert server.ok
    assert [r.status for r in aloha_apps.server.requests] == [503, 503, 200]


async def test_server_503_every_time_is_unreachable_after_three_attempts(aloha_apps):
    aloha_apps.server.knobs.unavailable = 10
    async with http.make_client(timeout=5) as client:
        server = await flow.server_health(client, _settings(aloha_apps), policy=FAST)
    assert not server.ok and "HTTP 503 after 3 attempt(s)" in server.detail
    assert len(aloha_apps.server.requests) == 3


async def test_run_task_sends_every_field_so_nothing_persists_from_an_earlier_run(aloha_apps):
    settings = _settings(aloha_apps)
    fake = aloha_apps.client
    first = aloha.run_task_request(
        "first", settings.server_url, trace_id="hero", selected_screen=2, max_steps=2
    )
    async with http.make_client(timeout=5) as client:
        response = await flow.run_task(client, _unlocked(), settings, first)
        assert response == {"status": "success", "message": "Task started", "task": "first"}
        assert fake.wait_idle()
        second = aloha.run_task_request("second", settings.server_url, max_steps=2)
        await flow.run_task(client, _unlocked(), settings, second)
    assert fake.wait_idle()
    assert fake.state.runs[1] == {
        "task": "second",
        "selected_screen": 0,
        "trace_id": "example_trace",
        "server_url": aloha_apps.server.url + "/generate_action",
        "max_steps": 2,
    }
    assert [r.body for r in fake.calls("/run_task")] == [first.body(), second.body()]


async def test_run_task_refused_while_the_desktop_is_locked_sends_nothing(aloha_apps):
    runner = FakeRunner(host="vm")
    runner.expect_raw(LOCK_PROBE, stdout="locked\r\n")
    settings = _settings(aloha_apps)
    request = aloha.run_task_request("t", settings.server_url)
    async with http.make_client(timeout=5) as client:
        with pytest.raises(DesktopLocked, match="state=blocked") as caught:
            await flow.run_task(client, runner, settings, request)
    assert caught.value.exit_code == ExitCode.FAILURE
    assert aloha_apps.client.requests == []
    runner.assert_done()


async def test_run_task_409_is_a_task_already_running(aloha_apps):
    fake = aloha_apps.client
    fake.knobs.step_s = 0.2
    settings = _settings(aloha_apps)
    request = aloha.run_task_request("long", settings.server_url, max_steps=1000)
    async with http.make_client(timeout=5) as client:
        await flow.run_task(client, _unlocked(), settings, request)
        _until(lambda: fake.state.busy, "the first run is busy")
        with pytest.raises(flow.AlohaBusy, match="a task is already running") as caught:
            await flow.run_task(client, _unlocked(), settings, request)
        assert caught.value.exit_code == ExitCode.FAILURE
        await flow.stop(client, settings)
    assert [r.status for r in fake.calls("/run_task")] == [200, 409]


async def test_run_task_html_500_names_the_exception(aloha_apps):
    aloha_apps.client.knobs.error_paths.add("/run_task")
    settings = _settings(aloha_apps)
    request = aloha.run_task_request("t", settings.server_url)
    async with http.make_client(timeout=5) as client:
        with pytest.raises(OperationalError, match="HTTP 500: KeyError: 'generated_action'"):
            await flow.run_task(client, _unlocked(), settings, request)
    assert len(aloha_apps.client.calls("/run_task")) == 1


async def test_run_task_503_is_retried_as_the_client_did_not_take_it(aloha_apps):
    aloha_apps.client.knobs.unavailable = 2
    settings = _settings(aloha_apps)
    request = aloha.run_task_request("t", settings.server_url, max_steps=1)
    async with http.make_client(timeout=5) as client:
        await flow.run_task(client, _unlocked(), settings, request, policy=FAST)
    assert [r.status for r in aloha_apps.client.calls("/run_task")] == [503, 503, 200]
    assert len(aloha_apps.client.state.runs) == 1


async def test_run_task_is_never_sent_twice_after_a_dropped_answer():
    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        raise httpx.ReadError("connection reset mid-answer", request=request)

    settings = AlohaSection(server_url="http://127.0.0.1:7887/", client_url="http://127.0.0.1:7888")
    request = aloha.run_task_request("t", settings.server_url)
    transport = httpx.MockTransport(answer)
    async with http.make_client(timeout=5, transport=transport) as client:
        with pytest.raises(HttpUnavailable) as caught:
            await flow.run_task(client, _unlocked(), settings, request, policy=FAST)
        assert caught.value.exit_code == ExitCode.UNAVAILABLE
        assert sent == ["/run_task"]
        # The same failure on the health GET is retried: the difference is the method.
        await flow.client_health(client, settings, policy=FAST)
    assert sent == ["/run_task", "/", "/", "/"]


async def test_run_task_hung_client_is_a_timeout_and_sent_once(aloha_apps):
    fake = aloha_apps.client
    fake.knobs.hang.set()
    settings = _settings(aloha_apps)
    request = aloha.run_task_request("t", settings.server_url, max_steps=1)
    try:
        async with http.make_client(timeout=0.3) as client:
            with pytest.raises(HomeopsTimeout) as caught:
                await flow.run_task(client, _unlocked(), settings, request, policy=FAST)
    finally:
        fake.knobs.hang.clear()
    assert caught.value.exit_code == ExitCode.TIMEOUT
    _until(lambda: len(fake.requests) == 1, "the hung request is answered")
    assert fake.wait_idle()
    assert len(fake.calls("/run_task")) == 1


async def test_stop_while_running_then_idle(aloha_apps):
    fake = aloha_apps.client
    fake.knobs.step_s = 0.2
    settings = _settings(aloha_apps)
    request = aloha.run_task_request("long", settings.server_url, max_steps=1000)
    async with http.make_client(timeout=5) as client:
        await flow.run_task(client, _unlocked(), settings, request)
        _until(lambda: fake.state.busy, "the run is busy")
        first = await flow.stop(client, settings)
        assert fake.wait_idle()
        second = await flow.stop(client, settings)
    assert first.outcome is aloha.StopOutcome.STOPPING
    assert second.outcome is aloha.StopOutcome.IDLE
    assert second.message == "No active task to stop"


async def test_stop_html_500_is_an_operational_error(aloha_apps):
    aloha_apps.client.knobs.error_paths.add("/stop")
    async with http.make_client(timeout=5) as client:
        with pytest.raises(OperationalError, match=r"aloha stop: .*HTTP 500: KeyError"):
            await flow.stop(client, _settings(aloha_apps))


async def test_run_and_wait_follows_only_this_runs_lines(aloha_apps):
    settings = _settings(aloha_apps)
    log = FileLog(aloha_apps.log_path)
    async with http.make_client(timeout=5) as client:
        earlier = aloha.run_task_request("earlier", settings.server_url, max_steps=6)
        await flow.run_task(client, _unlocked(), settings, earlier)
        assert aloha_apps.client.wait_idle()
        assert "process_input thread finished." in log.path.read_text()
        request = aloha.run_task_request("ours", settings.server_url, max_steps=3)
        result = await flow.run(
            client, _unlocked(), settings, request, log=log, wait=True, poll_interval=0.02
        )
    assert result.response["task"] == "ours"
    assert result.end is not None and result.end.progress.finished
    assert [s.content for s in result.end.progress.steps] == [
        "step 1: CLICK for ours",
        "step 2: CLICK for ours",
    ]


async def test_wait_without_a_log_is_a_usage_error_before_anything_is_sent(aloha_apps):
    settings = _settings(aloha_apps)
    request = aloha.run_task_request("t", settings.server_url)
    runner = FakeRunner(host="vm")
    async with http.make_client(timeout=5) as client:
        with pytest.raises(UsageError, match=r"aloha\.client_log_path") as caught:
            await flow.run(client, runner, settings, request, log=None, wait=True)
    assert caught.value.exit_code == ExitCode.USAGE
    assert aloha_apps.client.requests == [] and runner.calls == []


async def test_unreadable_log_fails_before_the_task_starts(aloha_apps, tmp_path):
    settings = _settings(aloha_apps)
    request = aloha.run_task_request("t", settings.server_url)
    log = FileLog(tmp_path / "missing.log")

    async def missing(*, timeout):
        raise OperationalError("sftp get: No such file")

    log.read = missing  # type: ignore[method-assign]
    async with http.make_client(timeout=5) as client:
        with pytest.raises(OperationalError, match="cannot read the Aloha client's log"):
            await flow.run(client, FakeRunner(), settings, request, log=log, wait=True)
    assert aloha_apps.client.requests == []


async def test_wait_timeout_is_exit_4_and_stops_the_run(aloha_apps):
    fake = aloha_apps.client
    fake.knobs.step_s = 0.2
    settings = _settings(aloha_apps)
    request = aloha.run_task_request("long", settings.server_url, max_steps=1000)
    log = FileLog(aloha_apps.log_path)
    async with http.make_client(timeout=5) as client:
        with pytest.raises(HomeopsTimeout, match="no end of the run") as caught:
            await flow.run(
                client,
                _unlocked(),
                settings,
                request,
                log=log,
                wait=True,
                timeout=0.3,
                poll_interval=0.05,
            )
    assert caught.value.exit_code == ExitCode.TIMEOUT
    assert [r.status for r in fake.calls("/stop")] == [200]
    assert fake.wait_idle()


async def test_cancelled_wait_stops_the_run(aloha_apps):
    fake = aloha_apps.client
    fake.knobs.step_s = 0.2
    settings = _settings(aloha_apps)
    request = aloha.run_task_request("long", settings.server_url, max_steps=1000)
    log = FileLog(aloha_apps.log_path)
    async with http.make_client(timeout=5) as client:
        task = asyncio.create_task(
            flow.run(client, _unlocked(), settings, request, log=log, wait=True, poll_interval=0.02)
        )
        # The wait is under way once the log was read for its start size and polled twice.
        for _ in range(1000):
            if log.reads >= 3:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(fake.calls("/stop")) == 1
    assert fake.wait_idle()


async def test_wait_reads_a_half_written_line_whole_and_survives_truncation():
    started, finished = (
        b"x - process_input thread started.\n",
        b"x - process_input thread finished.\n",
    )
    old = started + finished
    log = ScriptedLog(
        [
            old,
            old + b"x - INFO - process_input thread started.\nx - INFO - process_input thr",
            b"x - INFO - [loop_msg] type=text content=a\n",  # restarted: a new, shorter log
            b"x - INFO - [loop_msg] type=text content=a\n" + finished,
            started + finished,
        ]
    )
    start = len(old)
    end = await flow.wait_for_run_end(log, start, timeout=10, poll_interval=0.001)
    # Our "started" was seen before the restart; the new log's step and "finished" are its end.
    assert end.progress.finished and [s.content for s in end.progress.steps] == ["a"]
    assert len(log.reads) == 4


async def test_wait_follows_a_utf16_log():
    bom = "\ufeff".encode("utf-16-le")
    head = bom + "a - INFO - booting\r\n".encode("utf-16-le")
    run = (
        "a - INFO - process_input thread started.\r\na - INFO - process_input thread finished.\r\n"
    )
    log = ScriptedLog([head, head + run.encode("utf-16-le")])
    end = await flow.wait_for_run_end(log, len(head), timeout=10, poll_interval=0.001)
    assert end.progress.started and end.progress.finished


async def test_wait_retries_an_unreachable_vm_within_the_timeout():
    class Flaky(ScriptedLog):
        async def read(self, *, timeout):
            self.reads.append(1)
            if len(self.reads) == 1:
                from homeops.core.errors import SshUnavailable

                raise SshUnavailable("connection lost")
            return b"process_input thread started.\nprocess_input thread finished.\n"

    end = await flow.wait_for_run_end(Flaky([]), 0, timeout=10, poll_interval=0.001)
    assert end.progress.finished


async def test_wait_timeout_with_a_controlled_clock():
    now = [0.0]

    async def sleep(seconds):
        now[0] += seconds

    log = ScriptedLog([b"process_input thread started.\n"])
    with pytest.raises(HomeopsTimeout, match="after 5s \\(running, 0 step"):
        await flow.wait_for_run_end(
            log, 0, timeout=5, poll_interval=1, clock=lambda: now[0], sleep=sleep
        )
    assert len(log.reads) == 5


async def test_the_fake_as_a_subprocess_answers_and_crashes_on_request(tmp_path):
    import os

    from tests.fixtures.aloha import aloha_process

    port = free_port()
    settings = AlohaSection(server_url=f"http://127.0.0.1:{port}/", client_url="http://127.0.0.1:1")
    with aloha_process("server", port) as pid:
        async with http.make_client(timeout=5) as client:
            assert (await flow.server_health(client, settings)).ok
            knob = await client.get(f"http://127.0.0.1:{port}/__fake__/crash")
            assert knob.status_code == 200

            def gone():
                try:
                    return os.waitpid(pid, os.WNOHANG)[0] == pid
                except ChildProcessError:
                    return True

            _until(gone, "the fake process exits")
            after = await flow.server_health(client, settings, policy=FAST)
    assert not after.ok and "unreachable" in after.detail
