"""The Aloha apps (ShowUI-Aloha "Aloha Act", CONTRACTS.md §2) as pure builders and parsers.

The server (7887) plans and acts one step per ``POST /generate_action``; its only health
route is ``GET /`` with a marker in the body. The client (7888) runs a task in a background
thread after ``POST /run_task`` and has no status route: a finished run is visible only in
its log (``process_input thread started.`` / ``finished.``), which the flow reads over SSH.

No I/O here: the flow (:mod:`homeops.windows.aloha_flow`) sends what these build and hands
what comes back to these parsers.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, assert_never
from urllib.parse import SplitResult, urlsplit, urlunsplit

from homeops.core.errors import UsageError

SERVER_MARKER: Final = "Aloha API server is running"
GENERATE_ACTION_PATH: Final = "/generate_action"
# The client's own start-up defaults (its argparse). Sent explicitly, because whatever one
# run sets persists into later runs that omit it (CONTRACTS.md §2).
DEFAULT_SELECTED_SCREEN: Final = 0
DEFAULT_TRACE_ID: Final = "example_trace"
DEFAULT_MAX_STEPS: Final = 50
MAX_STEPS_LIMIT: Final = 10_000
SELECTED_SCREEN_LIMIT: Final = 64
# An error message quoting a whole HTML page is not one line.
_DETAIL_CHARS: Final = 200


# -- requests -------------------------------------------------------------------------------


def root_url(base_url: str) -> str:
    """``GET /`` of an app whose base URL is ``base_url`` (a path in it is dropped)."""
    parts = _http_url(base_url, "aloha URL")
    return urlunsplit((parts.scheme, parts.netloc, "/", "", ""))


def app_url(base_url: str, path: str) -> str:
    """``path`` (``/run_task``) on the app at ``base_url``."""
    parts = _http_url(base_url, "aloha URL")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def generate_action_url(server_url: str) -> str:
    """The server's ``/generate_action`` URL the client is told to call, from
    ``aloha.server_url`` (``http://127.0.0.1:7887/`` → ``…:7887/generate_action``).

    The client runs on the VM, so this URL is read there: the seed's forwards keep the
    same ports on both sides, which is why the Linux-side URL works for it too.
    """
    return app_url(server_url, GENERATE_ACTION_PATH)


def _http_url(url: str, what: str) -> SplitResult:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{what}: not an http(s) URL with a host: {url!r}")
    return parts


@dataclass(frozen=True)
class RunTaskRequest:
    """One ``POST /run_task``: every field, always (the client keeps earlier runs' values)."""

    task: str
    server_url: str
    selected_screen: int = DEFAULT_SELECTED_SCREEN
    trace_id: str = DEFAULT_TRACE_ID
    max_steps: int = DEFAULT_MAX_STEPS

    def __post_init__(self) -> None:
        if not self.task.strip():
            raise UsageError("--task: the task text is empty")
        if isinstance(self.max_steps, bool) or not 1 <= self.max_steps <= MAX_STEPS_LIMIT:
            raise UsageError(f"--max-steps: must be 1-{MAX_STEPS_LIMIT}, got {self.max_steps!r}")
        if (
            isinstance(self.selected_screen, bool)
            or not 0 <= self.selected_screen <= SELECTED_SCREEN_LIMIT
        ):
            raise UsageError(
                f"--selected-screen: must be 0-{SELECTED_SCREEN_LIMIT}, "
                f"got {self.selected_screen!r}"
            )
        if not self.trace_id.strip():
            raise UsageError("--trace-id: empty (omit it for the client's default)")
        _http_url(self.server_url, "server_url")

    def body(self) -> dict[str, object]:
        """The JSON body, with all five fields."""
        return {
            "task": self.task,
            "selected_screen": self.selected_screen,
            "trace_id": self.trace_id,
            "server_url": self.server_url,
            "max_steps": self.max_steps,
        }


def run_task_request(
    task: str,
    server_url: str,
    *,
    selected_screen: int | None = None,
    trace_id: str | None = None,
    max_steps: int | None = None,
) -> RunTaskRequest:
    """A :class:`RunTaskRequest` for ``aloha.server_url``, omitted values at the client's
    start-up defaults (so nothing is inherited from an earlier run)."""
    return RunTaskRequest(
        task=task,
        server_url=generate_action_url(server_url),
        selected_screen=DEFAULT_SELECTED_SCREEN if selected_screen is None else selected_screen,
        trace_id=DEFAULT_TRACE_ID if trace_id is None else trace_id,
        max_steps=DEFAULT_MAX_STEPS if max_steps is None else max_steps,
    )


# -- answers --------------------------------------------------------------------------------


def _json_object(body: str) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _DETAIL_CHARS else line[: _DETAIL_CHARS - 3] + "..."


def error_detail(body: str) -> str:
    """A one-line reason from an error body: a JSON ``message``/``error``, the title of a
    Flask/Werkzeug HTML page (the debugger's names the exception), or the text itself."""
    data = _json_object(body)
    if data is not None:
        for key in ("message", "error"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                return _one_line(value)
        return _one_line(body)
    found = _TITLE.search(body)
    if found:
        title = html.unescape(found.group(1))
        # The debugger page's title is "<Exception>: <message> // Werkzeug Debugger".
        return _one_line(title.removesuffix("// Werkzeug Debugger").strip())
    text = html.unescape(_TAGS.sub(" ", body))
    return _one_line(text) or "(empty body)"


class RunTaskOutcome(StrEnum):
    """What the client said to ``POST /run_task``."""

    STARTED = "started"  # 200: the run goes on in the client's background thread
    BUSY = "busy"  # 409: a task is already running
    REJECTED = "rejected"  # 400: the body was refused (missing task)
    ERROR = "error"  # anything else (a 500 page, an unexpected answer)


@dataclass(frozen=True)
class RunTaskAnswer:
    """``POST /run_task``'s answer. ``data`` is its JSON object (None if it was not JSON)."""

    outcome: RunTaskOutcome
    status_code: int
    message: str
    task: str | None
    data: dict[str, Any] | None


def parse_run_task(status_code: int, body: str) -> RunTaskAnswer:
    """Classify the client's answer to ``POST /run_task`` (200/400/409, or an error page)."""
    data = _json_object(body)
    message = error_detail(body) if body.strip() else f"HTTP {status_code} with an empty body"
    task = data.get("task") if data is not None else None
    task = task if isinstance(task, str) else None
    match status_code:
        case 200 if data is not None and data.get("status") == "success":
            outcome = RunTaskOutcome.STARTED
        case 409:
            outcome = RunTaskOutcome.BUSY
        case 400:
            outcome = RunTaskOutcome.REJECTED
        case 200:
            outcome = RunTaskOutcome.ERROR
            message = f"HTTP 200 but not the client's success answer: {message}"
        case _:
            outcome = RunTaskOutcome.ERROR
    return RunTaskAnswer(outcome, status_code, message, task, data)


class StopOutcome(StrEnum):
    """What the client said to ``POST /stop``."""

    STOPPING = "stopping"  # 200: the signal is sent; the run ends about a second later
    IDLE = "idle"  # 400: no active task
    ERROR = "error"


@dataclass(frozen=True)
class StopAnswer:
    """``POST /stop``'s answer."""

    outcome: StopOutcome
    status_code: int
    message: str


def parse_stop(status_code: int, body: str) -> StopAnswer:
    """Classify the client's answer to ``POST /stop`` (200 stop sent, 400 nothing running)."""
    data = _json_object(body)
    message = error_detail(body) if body.strip() else f"HTTP {status_code} with an empty body"
    if status_code == 200 and data is not None and data.get("status") == "success":
        return StopAnswer(StopOutcome.STOPPING, status_code, message)
    if status_code == 400:
        return StopAnswer(StopOutcome.IDLE, status_code, message)
    return StopAnswer(StopOutcome.ERROR, status_code, message)


@dataclass(frozen=True)
class ServerHealth:
    """The server's ``GET /``: healthy only with a 200 carrying the marker."""

    ok: bool
    status_code: int | None
    detail: str


def parse_server_root(status_code: int, body: str) -> ServerHealth:
    """Whether the server's ``GET /`` answer is the Aloha server's (200 and the marker)."""
    if status_code == 200 and SERVER_MARKER in body:
        return ServerHealth(True, status_code, SERVER_MARKER)
    if status_code == 200:
        return ServerHealth(False, status_code, "HTTP 200 without the Aloha server's marker")
    return ServerHealth(False, status_code, f"HTTP {status_code}: {error_detail(body)}")


@dataclass(frozen=True)
class ClientHealth:
    """The client's reachability. It has no health route, so any HTTP answer means it is
    up; ``note`` says which answer it was (404 is the expected one)."""

    reachable: bool
    status_code: int | None
    detail: str


def classify_client_root(status_code: int) -> ClientHealth:
    """Reachability from the client's answer to ``GET /`` (any answer is reachable)."""
    if status_code == 404:
        return ClientHealth(
            True, status_code, "reachable (HTTP 404: the client has no GET /, as expected)"
        )
    return ClientHealth(
        True,
        status_code,
        f"reachable, but HTTP {status_code} where the Aloha client answers 404: "
        "is something else on this port?",
    )


# -- the client's log -----------------------------------------------------------------------


class LogEventKind(StrEnum):
    """The client log lines that matter to a run."""

    RUN_STARTED = "started"
    RUN_FINISHED = "finished"
    LOOP_MSG = "loop_msg"
    RUN_ERROR = "error"


@dataclass(frozen=True)
class LogEvent:
    """One meaningful client log line; ``msg_type``/``content`` for ``[loop_msg]`` lines."""

    kind: LogEventKind
    line: str
    msg_type: str | None = None
    content: str | None = None


_LOOP_MSG = re.compile(r"\[loop_msg\] (?:type=(?P<type>\S*) content=(?P<content>.*)|(?P<raw>.*))$")
# The markers end the line (Python logging's "… - INFO - <message>"): a loop_msg that quotes
# one is caught first, and a line that only mentions the words does not count.
_MARKER = re.compile(r"(?:^|\s)process_input thread (?P<which>started|finished)\.$")
_RUN_ERROR = re.compile(r"Error during task processing: (?P<err>.*)$")


def parse_log_line(line: str) -> LogEvent | None:
    """The event on one client log line, or None for every other line (access logs, …)."""
    text = line.rstrip("\r\n").rstrip()
    loop = _LOOP_MSG.search(text)
    if loop:
        if loop.group("raw") is not None:
            return LogEvent(LogEventKind.LOOP_MSG, text, None, loop.group("raw"))
        return LogEvent(LogEventKind.LOOP_MSG, text, loop.group("type"), loop.group("content"))
    marker = _MARKER.search(text)
    if marker:
        started = marker.group("which") == "started"
        kind = LogEventKind.RUN_STARTED if started else LogEventKind.RUN_FINISHED
        return LogEvent(kind, text)
    error = _RUN_ERROR.search(text)
    if error:
        return LogEvent(LogEventKind.RUN_ERROR, text, None, error.group("err"))
    return None


def parse_log_lines(text: str) -> list[LogEvent]:
    """The events of complete log lines, in order."""
    return [e for e in map(parse_log_line, text.splitlines()) if e is not None]


def decode_log(data: bytes) -> str:
    """The client's log bytes as text: UTF-8, or UTF-16 when a BOM says so (a log written
    through Windows PowerShell 5.1's ``>`` redirection is UTF-16LE)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    return data.decode("utf-8-sig", "replace")


@dataclass(frozen=True)
class RunProgress:
    """What the log said since the run was started: whether it began and ended, the
    ``[loop_msg]`` steps and any ``Error during task processing`` it logged."""

    started: bool = False
    finished: bool = False
    steps: tuple[LogEvent, ...] = ()
    errors: tuple[str, ...] = ()


def follow_run(progress: RunProgress, events: list[LogEvent]) -> RunProgress:
    """``progress`` after ``events``. A "finished" counts only after a "started": one left
    by a run that was ending when ours was posted is not our run's end."""
    started, finished = progress.started, progress.finished
    steps, errors = list(progress.steps), list(progress.errors)
    for event in events:
        if finished:
            break
        match event.kind:
            case LogEventKind.RUN_STARTED:
                started = True
            case LogEventKind.RUN_FINISHED:
                finished = started
            case LogEventKind.LOOP_MSG:
                if started:
                    steps.append(event)
            case LogEventKind.RUN_ERROR:
                if started:
                    errors.append(event.content or event.line)
            case _:
                assert_never(event.kind)
    return RunProgress(started, finished, tuple(steps), tuple(errors))
