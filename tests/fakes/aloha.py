"""A fake of both Aloha apps (ShowUI-Aloha "Aloha Act"), real HTTP on loopback.

Imitates CONTRACTS.md §2, the routes and answers of the real Flask apps and their observed
quirks:

- server (7887): ``GET /`` → 200 with ``Aloha API server is running``; ``POST /generate_action``
  → 200 with a plan and an action, 400 ``{"error": "Missing required fields: …"}``, or Flask's
  HTML 500 debugger page (knob ``server_error``); ``action`` sets the action verb (``ERROR``).
- client (7888): ``POST /run_task`` → 400 when ``task`` is missing (checked before busy), 409
  while a run is going on, else 200 and a background run; the busy flag is set inside that
  run's thread a few ms late, as in the real client, so a second ``/run_task`` at once can
  still get 200. Fields given to one run persist into later runs that omit them. A run logs
  ``process_input thread started.``, one ``[loop_msg] type=… content=…`` per step
  (``max_steps - 1`` steps, ``step_s`` each) and ``process_input thread finished.`` to the
  log file. ``POST /stop`` → 200 until the run has really ended (``stop_delay_s`` later),
  then 400. ``GET /`` → 404 (the client has no such route).

Knobs (not part of the contract; also reachable over HTTP under ``/__fake__/`` so a test can
drive a subprocess): answer 503 to the next N requests, hang every request until released,
crash (the subprocess exits at once; in-process the listener is closed).

Runs in-process (:class:`FakeAloha`, see tests/fixtures/aloha.py) or as a subprocess:
``python -m tests.fakes.aloha --role server|client --port P [--log FILE]``. It listens on
127.0.0.0/8 only and the client calls ``server_url`` only there (``--call-server``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

Role = Literal["server", "client"]

MARKER: Final = "Aloha API server is running"
# A hung request is released by the test, or by this bound: no thread outlives a test run.
HANG_LIMIT_S: Final = 30.0
CLIENT_DEFAULTS: Final[dict[str, Any]] = {
    "task": "Following the instructions to complete the task.",
    "selected_screen": 0,
    "trace_id": "example_trace",
    "server_url": "http://127.0.0.1:7887/generate_action",
    "max_steps": 50,
}

_NOT_FOUND_PAGE: Final = (
    "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    "<p>The requested URL was not found on the server. If you entered the URL manually "
    "please check your spelling and try again.</p>\n"
)
_DEBUGGER_PAGE: Final = (
    "<!doctype html>\n<html lang=en>\n  <head>\n"
    "    <title>KeyError: &#39;generated_action&#39;\n // Werkzeug Debugger</title>\n"
    '    <link rel="stylesheet" href="?__debugger__=yes&amp;cmd=resource&amp;f=style.css">\n'
    '  </head>\n  <body style="background-color: #fff">\n    <div class="debugger">\n'
    '<h1>KeyError</h1>\n<div class="detail"><p class="errormsg">KeyError: \'generated_action\''
    '</p></div>\n<h2 class="traceback">Traceback <em>(most recent call last)</em></h2>\n'
    "</div>\n  </body>\n</html>\n"
)


@dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    body: dict[str, Any] | None
    status: int


@dataclass
class Knobs:
    """What the fake does besides the contract; change them while it runs."""

    unavailable: int = 0  # answer 503 to this many next requests
    hang: threading.Event = field(default_factory=threading.Event)  # set: requests hang
    server_error: bool = False  # server: /generate_action gives the HTML 500 page
    action: str = "CLICK"  # server: the action verb of a 200
    step_s: float = 0.02  # client: one step of a run
    busy_delay_s: float = 0.005  # client: the busy flag is set this late in the run thread
    stop_delay_s: float = 0.05  # client: a run ends this long after /stop
    call_server: bool = False  # client: each step POSTs to server_url (loopback only)
    error_paths: set[str] = field(default_factory=set)  # these routes give the HTML 500 page


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _RunState:
    """The client's shared state: the persisted fields and the one background run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fields: dict[str, Any] = dict(CLIENT_DEFAULTS)
        self.busy = False
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.runs: list[dict[str, Any]] = []


class FakeAloha:
    """One fake Aloha app on ``127.0.0.1:port`` (0: a free port)."""

    def __init__(
        self,
        role: Role,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: Path | None = None,
        knobs: Knobs | None = None,
    ) -> None:
        if not _loopback(host):
            raise ValueError(f"the fake listens on loopback only, not {host!r}")
        self.role: Role = role
        self.knobs = knobs or Knobs()
        self.log_path = log_path
        self.requests: list[Recorded] = []
        self.state = _RunState()
        self._log_lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), _handler_class(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.crash_exits = False  # as a subprocess, a crash is a real exit

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeAloha:
        """Serve in a background thread."""
        # A short poll: shutdown() waits for it, and tests tear a fake down each time.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        if self.role == "client":
            self.log(f"Starting Client Flask on 127.0.0.1:{self.port}")
        return self

    def close(self) -> None:
        """Stop serving, release hung requests, end a run."""
        self._closing.set()
        self.knobs.hang.clear()
        self.state.stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        run = self.state.thread
        if run is not None:
            run.join(timeout=5)

    def crash(self) -> None:
        """Die like a crashed app: exit (subprocess) or close the listener at once."""
        if self.crash_exits:
            os._exit(70)
        self._closing.set()
        self._httpd.server_close()

    def calls(self, path: str, method: str = "POST") -> list[Recorded]:
        """The recorded requests to ``path``."""
        return [r for r in self.requests if r.path == path and r.method == method]

    def log(self, message: str, level: str = "INFO") -> None:
        """One client log line, as Python logging formats it (``asctime - LEVEL - msg``)."""
        if self.log_path is None:
            return
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        with self._log_lock, self.log_path.open("a", encoding="utf-8") as out:
            out.write(f"{stamp} - {level} - {message}\n")

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait (bounded) until no client run is going on."""
        run = self.state.thread
        if run is not None:
            run.join(timeout=timeout)
        return not self.state.busy

    # -- routes ------------------------------------------------------------------------

    def answer(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, str, str]:
        """``(status, content type, body)`` for one request (after the knobs)."""
        if self.role == "server":
            return self._server(method, path, body)
        return self._client(method, path, body)

    def _server(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, str, str]:
        if (method, path) == ("GET", "/"):
            return 200, "text/html; charset=utf-8", MARKER
        if (method, path) == ("POST", "/generate_action"):
            data = body or {}
            missing = [k for k in ("screenshot", "query") if k not in data]
            if missing:
                return _json(400, {"error": f"Missing required fields: {', '.join(missing)}"})
            if self.knobs.server_error:
                return 500, "text/html; charset=utf-8", _DEBUGGER_PAGE
            history = data.get("action_history") or []
            return _json(
                200,
                {
                    "status": "success",
                    "generated_plan": {"step": len(history) + 1, "plan": str(data["query"])},
                    "generated_action": {
                        "content": {"action": self.knobs.action, "position": [100, 200]}
                    },
                    "current_traj_step": len(history) + 1,
                    "complete_flag": False,
                },
            )
        return 404, "text/html; charset=utf-8", _NOT_FOUND_PAGE

    def _client(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, str, str]:
        state = self.state
        if (method, path) == ("POST", "/run_task"):
            data = body or {}
            if "task" not in data:
                return _json(400, {"status": "error", "message": "Missing required field(s): task"})
            with state.lock:
                if state.busy:
                    return _json(409, {"status": "error", "message": "A task is already running"})
                for key in CLIENT_DEFAULTS:
                    if key in data:
                        state.fields[key] = data[key]
                run = dict(state.fields)
                state.runs.append(run)
                state.stop.clear()
                state.thread = threading.Thread(target=self._run, args=(run,), daemon=True)
                state.thread.start()
            return _json(200, {"status": "success", "message": "Task started", "task": run["task"]})
        if (method, path) == ("POST", "/stop"):
            with state.lock:
                if not state.busy:
                    return _json(400, {"status": "error", "message": "No active task to stop"})
                state.stop.set()
            return _json(200, {"status": "success", "message": "Stop signal sent"})
        return 404, "text/html; charset=utf-8", _NOT_FOUND_PAGE

    def _run(self, run: dict[str, Any]) -> None:
        state, knobs = self.state, self.knobs
        self.log("process_input thread started.")
        # As in the real client: busy is set inside the thread, a moment after the 200.
        time.sleep(knobs.busy_delay_s)
        with state.lock:
            state.busy = True
        try:
            steps = max(int(run.get("max_steps") or 1) - 1, 0)
            for step in range(1, steps + 1):
                if state.stop.wait(knobs.step_s):
                    break
                self._step(run, step)
            if state.stop.is_set():
                time.sleep(knobs.stop_delay_s)
        finally:
            with state.lock:
                state.busy = False
                state.stop.clear()
            self.log("process_input thread finished.")

    def _step(self, run: dict[str, Any], step: int) -> None:
        action = "CLICK"
        url = str(run.get("server_url") or "")
        host = urlsplit(url).hostname or ""
        if self.knobs.call_server and _loopback(host):
            body = json.dumps({"screenshot": "iVBORw0KGgo=", "query": run["task"]}).encode()
            req = urllib.request.Request(
                url, body, {"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:  # loopback only, checked above
                    answer = json.loads(resp.read())
                action = str(answer["generated_action"]["content"]["action"])
            except (OSError, ValueError, KeyError) as exc:
                self.log(f"Error during task processing: {exc}", "ERROR")
                self.state.stop.set()
                return
        self.log(f"[loop_msg] type=text content=step {step}: {action} for {run['task']}"[:140])


def _json(status: int, data: dict[str, Any]) -> tuple[int, str, str]:
    return status, "application/json", json.dumps(data)


def _handler_class(app: FakeAloha) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads :attr:`FakeAloha.requests`, not stderr."""

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            if parts.path.startswith("/__fake__/"):
                self._send(*_control(app, parts.path, parse_qs(parts.query)))
                return
            body = _body(raw, self.headers.get("Content-Type") or "")
            knobs = app.knobs
            if knobs.hang.is_set():
                deadline = time.monotonic() + HANG_LIMIT_S
                while knobs.hang.is_set() and time.monotonic() < deadline:
                    if app._closing.wait(0.02):
                        break
            if knobs.unavailable > 0:
                knobs.unavailable -= 1
                status, ctype, text = 503, "text/html", "<title>503 Service Unavailable</title>"
            elif parts.path in knobs.error_paths:
                status, ctype, text = 500, "text/html; charset=utf-8", _DEBUGGER_PAGE
            else:
                status, ctype, text = app.answer(method, parts.path, body)
            app.requests.append(Recorded(method, parts.path, body, status))
            self._send(status, ctype, text)

        def _send(self, status: int, ctype: str, text: str) -> None:
            data = text.encode()
            with contextlib.suppress(OSError):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

    return Handler


def _body(raw: bytes, ctype: str) -> dict[str, Any] | None:
    # Flask's get_json(silent=True) needs a JSON content type and ignores what fails to parse.
    if "json" not in ctype:
        return None
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _control(app: FakeAloha, path: str, query: dict[str, list[str]]) -> tuple[int, str, str]:
    knobs = app.knobs
    match path:
        case "/__fake__/unavailable":
            knobs.unavailable = int(query.get("n", ["1"])[0])
        case "/__fake__/hang":
            knobs.hang.set()
        case "/__fake__/release":
            knobs.hang.clear()
        case "/__fake__/crash":
            threading.Timer(0.01, app.crash).start()
        case "/__fake__/requests":
            rows = [r.__dict__ for r in app.requests]
            return 200, "application/json", json.dumps(rows)
        case _:
            return 404, "text/plain", "unknown knob"
    return 200, "text/plain", "ok"


@contextlib.contextmanager
def running(role: Role, **kwargs: Any) -> Iterator[FakeAloha]:
    """A started fake, closed on exit."""
    fake = FakeAloha(role, **kwargs).start()
    try:
        yield fake
    finally:
        fake.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.fakes.aloha``: serve one fake app until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--role", choices=("server", "client"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, default=None, help="client log file (appended)")
    parser.add_argument("--step-s", type=float, default=Knobs.step_s)
    parser.add_argument("--call-server", action="store_true")
    args = parser.parse_args(argv)
    knobs = Knobs(step_s=args.step_s, call_server=args.call_server)
    role: Role = "server" if args.role == "server" else "client"
    fake = FakeAloha(role, host=args.host, port=args.port, log_path=args.log, knobs=knobs)
    fake.crash_exits = True
    fake.start()
    sys.stdout.write(f"listening {fake.url}\n")
    sys.stdout.flush()
    stop = threading.Event()
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
