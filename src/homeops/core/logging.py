"""Structured logs: one logfmt line per event on stderr (seed 001's schema).

Every line starts ``ts level component op msg``, then ``err`` and ``duration_ms`` when
present, then context keys. Values are ASCII only; a value holding a space, ``=``, a quote,
a backslash, a control or a non-ASCII character is double-quoted with ``\\"``, ``\\\\``,
``\\n``/``\\r``/``\\t`` and ``\\uXXXX`` escapes. Registered secrets become ``***`` in every line,
including lines from third-party libraries that log through :mod:`logging`.

Built on the standard :mod:`logging` module so records from asyncssh and friends pass
through the same formatter instead of printing their own format.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Final

LEVELS: Final = ("debug", "info", "warn", "error")
_STD_LEVEL: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_FROM_STD: Final = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}
MASK: Final = "***"
ROOT: Final = "homeops"
# Secrets shorter than this would mask ordinary words ("a", "on") all over the logs.
_MIN_SECRET_LEN: Final = 4

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log line from now on (process-wide)."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _secrets_lock:
            _secrets.add(value)


def clear_secrets() -> None:
    """Forget registered secrets (for tests)."""
    with _secrets_lock:
        _secrets.clear()


def mask(text: str) -> str:
    """Replace every registered secret in ``text`` with ``***``, longest first."""
    if not _secrets:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def encode_value(value: object) -> str:
    """Encode one logfmt value: bare when safe, else double-quoted with ASCII escapes."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "NaN"
    else:
        text = str(value)
    text = mask(text)
    if text and all(c.isascii() and c.isprintable() and c not in ' ="\\' for c in text):
        return text
    out = ['"']
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isascii() and ch.isprintable():
            out.append(ch)
        else:
            out.append(_u_escape(ch))
    out.append('"')
    return "".join(out)


def _u_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    # Outside the BMP: a UTF-16 surrogate pair, as JSON writes it, so readers can decode it.
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def encode_key(key: str) -> str:
    """Keys are identifiers; anything else becomes ``_`` so a key never breaks the line."""
    cleaned = "".join(c if (c.isascii() and (c.isalnum() or c in "_.-")) else "_" for c in key)
    return cleaned or "_"


def format_ts(epoch: float) -> str:
    """RFC3339 UTC timestamp with milliseconds."""
    dt = datetime.fromtimestamp(epoch, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def format_line(
    *,
    ts: float,
    level: str,
    component: str,
    op: str,
    msg: str,
    fields: Iterable[tuple[str, object]] = (),
) -> str:
    """Render one event as a logfmt line (no trailing newline)."""
    parts = [
        f"ts={format_ts(ts)}",
        f"level={level}",
        f"component={encode_value(component)}",
        f"op={encode_value(op)}",
        f"msg={encode_value(msg)}",
    ]
    parts.extend(f"{encode_key(k)}={encode_value(v)}" for k, v in fields)
    return " ".join(parts)


class LogfmtFormatter(logging.Formatter):
    """Formats homeops events and foreign :mod:`logging` records alike."""

    def format(self, record: logging.LogRecord) -> str:
        event: Mapping[str, Any] | None = getattr(record, "homeops", None)
        level = _FROM_STD.get(record.levelno, "info")
        if event is not None:
            component = str(event["component"])
            op = str(event["op"])
            fields: list[tuple[str, object]] = list(event["fields"])
        else:
            name = record.name
            component = name[len(ROOT) + 1 :] if name.startswith(ROOT + ".") else name
            op = record.funcName or "-"
            fields = []
            if record.exc_info and record.exc_info[1] is not None:
                fields.append(("err", repr(record.exc_info[1])))
        return format_line(
            ts=record.created,
            level=level,
            component=component,
            op=op,
            msg=record.getMessage(),
            fields=fields,
        )


class Logger:
    """A component's logger: ``log.info("connect", "connected", ssh_host=h)``.

    ``bind`` returns a child carrying extra context keys on every line.
    """

    __slots__ = ("_context", "_std", "component")

    def __init__(self, component: str, context: Mapping[str, object] | None = None) -> None:
        self.component = component
        self._std = logging.getLogger(f"{ROOT}.{component}")
        self._context: dict[str, object] = dict(context or {})

    def bind(self, **context: object) -> Logger:
        """A logger with ``context`` added to every line."""
        return Logger(self.component, {**self._context, **context})

    def enabled(self, level: str) -> bool:
        """Whether a line at ``level`` would be written (skip costly formatting if not)."""
        return self._std.isEnabledFor(_STD_LEVEL[level])

    def log(
        self,
        level: str,
        op: str,
        msg: str,
        *,
        err: object = None,
        duration_ms: float | None = None,
        **context: object,
    ) -> None:
        """Write one event. ``err`` and ``duration_ms`` come first after ``msg``."""
        std_level = _STD_LEVEL[level]
        if not self._std.isEnabledFor(std_level):
            return
        fields: list[tuple[str, object]] = []
        if err is not None:
            fields.append(("err", err))
        if duration_ms is not None:
            fields.append(("duration_ms", round(duration_ms, 1)))
        # An absent context value is left out rather than written as an empty string.
        fields.extend((k, v) for k, v in {**self._context, **context}.items() if v is not None)
        event = {"component": self.component, "op": op, "fields": fields}
        self._std.log(std_level, "%s", msg, extra={"homeops": event}, stacklevel=3)

    def debug(self, op: str, msg: str, **kw: Any) -> None:  # noqa: ANN401
        """Log at debug (only shown with ``--debug``)."""
        self.log("debug", op, msg, **kw)

    def info(self, op: str, msg: str, **kw: Any) -> None:  # noqa: ANN401
        """Log at info."""
        self.log("info", op, msg, **kw)

    def warn(self, op: str, msg: str, **kw: Any) -> None:  # noqa: ANN401
        """Log at warn."""
        self.log("warn", op, msg, **kw)

    def error(self, op: str, msg: str, **kw: Any) -> None:  # noqa: ANN401
        """Log at error."""
        self.log("error", op, msg, **kw)


def get_logger(component: str, **context: object) -> Logger:
    """The logger of ``component`` (e.g. ``"core.ssh"``, ``"windows.aloha"``)."""
    return Logger(component, context)


_handler: logging.Handler | None = None


# Set by quieted(): lines logged in that context (and in tasks and threads started from it)
# are debug lines, whatever their level.
_QUIET: ContextVar[bool] = ContextVar("homeops_quiet_logs", default=False)


@contextlib.contextmanager
def quieted() -> Iterator[None]:
    """Log everything inside at debug level (shown only with ``--debug``).

    A supervisor probes every interval; the probes' own retries, warnings and verdicts
    would repeat each pass, where the pass itself reports what changed. Third-party
    libraries' lines (asyncssh, httpx) are demoted too.
    """
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


class _QuietFilter(logging.Filter):
    """The handler's side of :func:`quieted`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and _QUIET.get():
            if not logging.getLogger().isEnabledFor(logging.DEBUG):
                return False
            record.levelno = logging.DEBUG
            record.levelname = "DEBUG"
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged, not when configured.

    A handler holding the stream it was created with keeps writing to it after the caller
    swapped stderr (an embedding program, pytest's capture) and fails on a closed file.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass  # always the current sys.stderr


def configure(
    *,
    debug: bool = False,
    stream: IO[str] | None = None,
    level: str | None = None,
) -> logging.Handler:
    """Send all logs to ``stream`` (stderr) as logfmt. Idempotent: replaces our handler."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(_QuietFilter())
    root.addHandler(handler)
    chosen = "debug" if debug else (level or "info")
    root.setLevel(_STD_LEVEL[chosen])
    # asyncssh logs every channel at INFO; that is debug-level noise for our users.
    logging.getLogger("asyncssh").setLevel(logging.DEBUG if debug else logging.WARNING)
    _handler = handler
    return handler


def reset() -> None:
    """Undo :func:`configure`: our handler removed, the root level back to WARNING.

    For programs that embed homeops commands (and the tests), so one command's --debug
    does not leak into whatever runs next in the process.
    """
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
    logging.getLogger().setLevel(logging.WARNING)


def timed(clock: Callable[[], float] = time.monotonic) -> Callable[[], float]:
    """Start a stopwatch; calling the result gives elapsed milliseconds."""
    start = clock()
    return lambda: (clock() - start) * 1000.0
