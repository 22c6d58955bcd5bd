"""Shared CLI plumbing: global options found anywhere on the line, settings loading, output."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import sys
import typing
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import typer

if TYPE_CHECKING:
    from homeops.core.config import Loaded
    from homeops.core.registry import DomainContext, Registry
    from homeops.core.settings import CoreSettings
    from homeops.core.umbrella import ConfigSet

JSON_HELP = "Print machine-readable JSON on stdout."
# ctx.meta key: the umbrella app's registry factory, so settings can be checked against what
# the domains register (failpoint names) without core importing any domain.
REGISTRY_META: Final = "homeops.registry"
# ctx.meta key of the command's ConfigSet: settings are loaded once per invocation.
CONFIG_META: Final = "homeops.config"
# An error line quoting a 5,000-character argument is no longer one readable line.
MAX_ERROR_CHARS: Final = 400
_HEAD_CHARS: Final = 260
_TAIL_CHARS: Final = 100
# How many times this process has written payload to stdout (write_stdout): json_errors
# compares it to know whether a command already printed its document before failing.
_stdout_writes = 0


@dataclass(frozen=True)
class GlobalOptions:
    """Options accepted before or after the subcommand: ``--config PATH`` and ``--debug``.

    ``seed`` is the domain of the seed tool being run (``win-automation`` -> ``windows``):
    its ``--config`` is then that domain's own file, not the umbrella file.
    """

    config: Path | None = None
    debug: bool = False
    seed: str | None = None


def split_global_options(
    argv: Sequence[str], commands: Collection[str] = ()
) -> tuple[GlobalOptions, list[str]]:
    """Pull ``--config PATH``/``--config=PATH`` and ``--debug`` out of ``argv`` wherever they are.

    Click only accepts group options before the subcommand; users (and the seeds' scripts)
    put ``--config`` after it too. Everything after ``--`` is left alone.

    :class:`UsageError` when the value is missing or empty: ``--config=`` would read the
    current directory, and ``--config doctor`` (value forgotten) would read a file called
    doctor and run no command. A value that is one of ``commands`` counts as missing; a file
    of that name is still reachable as ``--config=doctor`` or ``--config ./doctor``.
    """
    from homeops.core.errors import UsageError

    config: Path | None = None
    debug = False
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg == "--debug":
            debug = True
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
            if not value.strip():
                raise UsageError("--config: empty path")
            config = Path(value)
        elif arg == "--config":
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is None or following.startswith("-") or following in commands:
                after = "" if following is None else f" before {following!r}"
                if following in commands:
                    after += f" (for a file named {following}: --config ./{following})"
                raise UsageError(f"--config: missing value{after}")
            if not following.strip():
                raise UsageError("--config: empty path")
            config = Path(following)
            i += 1
        else:
            rest.append(arg)
        i += 1
    return GlobalOptions(config, debug), rest


def options(ctx: typer.Context) -> GlobalOptions:
    """The invocation's global options (set by ``main``), found from any nested context."""
    root = ctx.find_root()
    obj = root.obj
    return obj if isinstance(obj, GlobalOptions) else GlobalOptions()


def registry_of(ctx: typer.Context) -> Registry:
    """The invocation's registry (from the app's root callback), else an empty one."""
    from homeops.core.registry import Registry

    factory = ctx.meta.get(REGISTRY_META)
    return factory() if factory is not None else Registry()


def load_config(ctx: typer.Context) -> ConfigSet:
    """Every setting of this invocation, loaded once: core, and each domain on demand.

    Defaults, then the umbrella file (``--config``/``HOMEOPS_CONFIG``; a seed tool's
    ``--config`` is its domain's own file), then the environment.
    """
    cached = ctx.meta.get(CONFIG_META)
    if cached is not None:
        return typing.cast("ConfigSet", cached)
    from homeops.core import logging as hlog
    from homeops.core.umbrella import load_config_set

    opts = options(ctx)
    registry = registry_of(ctx)
    config = load_config_set(
        registry.domain_configs(), environ=os.environ, config_path=opts.config, seed=opts.seed
    )
    hlog.configure(debug=opts.debug, level=config.core.settings.log.level)
    ctx.meta[CONFIG_META] = config
    check_failpoint(config, registry)
    return config


def defaults_only_store(ctx: typer.Context) -> Path | None:
    """The job store's path when only built-in defaults can decide it; else None.

    `jobs list` and `jobs status` are typed all day; loading the settings models costs
    pydantic's import (~70 ms). With no config file (``--config``, ``$HOMEOPS_CONFIG``), no
    seed tool and no ``HOMEOPS_*`` variable but the state dir, every setting is its default
    and the store is ``<state_dir>/jobs.sqlite3``, worked out here from the same function
    the settings use (core/paths.py). Anything else returns None: the caller loads the
    settings, which validates and reports, and warns about stray variables.
    """
    from homeops.core.paths import default_state_dir, expand_path

    opts = options(ctx)
    environ = os.environ
    if opts.config is not None or opts.seed is not None or CONFIG_META in ctx.meta:
        return None
    if any(name.startswith("HOMEOPS_") and name != "HOMEOPS_STATE_DIR" for name in environ):
        return None
    explicit = environ.get("HOMEOPS_STATE_DIR")
    if explicit:
        try:
            expand_path(explicit, environ)
        except ValueError:
            return None  # the settings path reports it, naming the variable
    return default_state_dir(environ) / "jobs.sqlite3"


def load_core(ctx: typer.Context) -> Loaded[CoreSettings]:
    """The core's settings with their sources (see :func:`load_config`)."""
    return load_config(ctx).core


def domain_context(ctx: typer.Context) -> DomainContext:
    """What the registry's factories get: environment, settings of core and every domain."""
    from homeops.core.registry import DomainContext

    config = load_config(ctx)
    return DomainContext(os.environ, options(ctx).config, config.core.settings, config)


def check_failpoint(config: ConfigSet, registry: Registry) -> None:
    """:class:`ConfigError` unless ``supervisor.failpoint`` is unset or a registered check.

    Checked on every settings load, so ``config show`` and ``doctor`` refuse the same
    settings ``supervise`` would, naming the variable or file that set the value.
    """
    from homeops.core.errors import ConfigError
    from homeops.core.registry import DomainContext

    loaded = config.core
    failpoint = loaded.settings.supervisor.failpoint
    if failpoint is None:
        return
    config_path = config.umbrella_path
    checks = registry.collect(DomainContext(os.environ, config_path, loaded.settings, config))
    names = [c.name for c in checks]
    if failpoint in names:
        return
    source = loaded.sources.get("supervisor.failpoint", "")
    label = source.split(":", 1)[1] if ":" in source else source
    raise ConfigError(
        label,
        "supervisor.failpoint",
        f"unknown check {failpoint!r} (known: {', '.join(names) or 'none'})",
    )


def print_json(data: Any) -> None:  # noqa: ANN401
    """Write ``data`` as indented JSON to stdout (the payload channel)."""
    import json

    # allow_nan=False: NaN/Infinity are not JSON; refuse rather than print what jq rejects.
    write_stdout(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")


def print_text(text: str) -> None:
    """Write payload text to stdout."""
    write_stdout(text if text.endswith("\n") else text + "\n")


def write_stdout(text: str) -> None:
    """Write to stdout and flush; a closed or full stdout is an OperationalError saying so."""
    import errno

    from homeops.core.errors import OperationalError

    global _stdout_writes
    _stdout_writes += 1  # counted when tried: half a document is still one printed
    stream = sys.stdout
    if stream is None:  # started with fd 1 closed (`homeops jobs list >&-`)
        raise OperationalError("cannot write output: stdout is closed")
    try:
        stream.write(text)
        stream.flush()
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise  # the reader went away (`| head`): not an error worth a message
        _drop_stdout()
        raise OperationalError(f"cannot write output to stdout: {exc.strerror or exc}") from exc


def _drop_stdout() -> None:
    # What could not be written stays buffered; without this the interpreter's flush at exit
    # fails again and prints a traceback after our one-line error.
    import os

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process exits


@contextlib.contextmanager
def json_errors(as_json: bool, *, one_line: bool = False) -> Iterator[dict[str, Any]]:
    """With ``--json``, a command failing with a known error still prints one JSON object.

    The body fills the yielded dict with what it knew when it failed (the host, the job
    id); a :class:`~homeops.core.errors.HomeopsError` (or an OS error nobody translated)
    then prints that plus ``ok`` (false), ``error`` (the message of the stderr line) and
    ``exit_code``, and goes on up: the error line on stderr and the exit code stay the
    console's (:func:`run_app`). A body that already printed its document (doctor's report,
    supervise's pass lines) gets no second one. ``one_line``: compact, for commands whose
    ``--json`` is one document per line.
    """
    from homeops.core.errors import ExitCode, HomeopsError

    extra: dict[str, Any] = {}
    before = _stdout_writes
    try:
        yield extra
    except HomeopsError as exc:
        if as_json and _stdout_writes == before:
            _print_failure(extra, error_line(str(exc)), int(exc.exit_code), one_line=one_line)
        raise
    except OSError as exc:
        # As run_app reports it; a reader that left (EPIPE) is not a failure to report.
        if as_json and _stdout_writes == before and not _is_epipe(exc):
            message = error_line(os_error_message(exc))
            _print_failure(extra, message, int(ExitCode.FAILURE), one_line=one_line)
        raise


def _print_failure(extra: dict[str, Any], error: str, exit_code: int, *, one_line: bool) -> None:
    import json

    from homeops.core.errors import HomeopsError

    data = {"ok": False, **extra}
    data.update(ok=False, error=error, exit_code=exit_code)
    # stdout gone (closed, full, a reader that left): the error line on stderr still tells.
    with contextlib.suppress(HomeopsError, OSError, ValueError):
        if one_line:
            write_stdout(json.dumps(data, default=str) + "\n")
        else:
            print_json(data)


def _is_epipe(exc: OSError) -> bool:
    import errno

    return exc.errno == errno.EPIPE


def os_error_message(exc: OSError) -> str:
    """An OS error no layer translated, as its one line says it: ``path: reason``."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def printable(cell: str) -> str:
    """``cell`` with every character that is not printable as its Python escape (``\x1b``).

    Table cells and result lines carry job errors, tool version lines, remote output, file
    names from backed-up data: a newline or a terminal escape in one must not break the
    layout or recolour (retitle, clear) the user's terminal."""
    if cell.isprintable():
        return cell
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in cell
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain aligned columns (no colour codes: stdout is often piped)."""
    cells = [[str(h).upper() for h in headers]] + [
        ["-" if c is None else printable(str(c)) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def duration_flag(flag: str, value: str) -> float:
    """Seconds in a duration flag such as ``--interval 30s``; exit 2 unless positive."""
    from homeops.core.durations import parse_duration
    from homeops.core.errors import UsageError

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if seconds <= 0:
        raise UsageError(f"{flag}: must be greater than 0")
    return seconds


# -- the console entry: every error is one line on stderr -----------------------------------


_CONTROL_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch.isascii() and ch.isprintable():
        return ch
    if ch in _CONTROL_ESCAPES:
        return _CONTROL_ESCAPES[ch]
    # Python's own escapes: whoever reads the line can paste them back into a string.
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def error_line(message: str) -> str:
    """``message`` made safe for one stderr line: secrets masked, ASCII, at most ~400 chars.

    Masking comes first: escaping or truncating first could split a secret so that the
    mask no longer matches and part of it is printed. Long input is elided in the middle,
    so the start (what was wrong) and the end (the reason) both survive.
    """
    from homeops.core.logging import mask

    pieces = [_escape(ch) for ch in mask(message)]
    if sum(map(len, pieces)) <= MAX_ERROR_CHARS:
        return "".join(pieces)
    head = tail = 0  # piece counts; an escape sequence is never cut in half
    size = 0
    while size < _HEAD_CHARS:
        size += len(pieces[head])
        head += 1
    size = 0
    while size < _TAIL_CHARS:
        tail += 1
        size += len(pieces[-tail])
    elided = len(pieces) - head - tail
    return f"{''.join(pieces[:head])}... ({elided} characters elided) ...{''.join(pieces[-tail:])}"


def report_error(message: str, prefix: str = "error: ") -> None:
    """Write one error line to stderr."""
    sys.stderr.write(prefix + error_line(message) + "\n")


def _click_exceptions() -> Any:  # noqa: ANN401
    # Typer 0.2x vendors click as typer._click; older releases depend on click itself.
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


_SLOW: Final = object()
_DECIMAL: Final = re.compile(r"0|[1-9][0-9]{0,17}")


def _fast_value(descriptor: Any, param: Any, value: object) -> object:  # noqa: ANN401
    """``value`` as Typer's pydantic coercion would return it, or ``_SLOW`` if unsure.

    Only the shapes whose result is certain: a missing value, a ``str`` that is already a
    str, an ``int`` written as plain decimal digits within its min/max, a list of strings.
    Anything else (and every invalid value, so its error message is Typer's own) goes to
    Typer's adapter.
    """
    multi = param.multiple or param.nargs == -1
    if value is None:
        return () if multi else None
    info = descriptor.parameter_info
    if info.parser is not None or descriptor.file_annotation is not None:
        return _SLOW
    annotation = descriptor.annotation
    if multi:
        if (
            annotation == list[str]
            and isinstance(value, list | tuple)
            and all(type(v) is str for v in value)
        ):
            return list(value)
        return _SLOW
    if annotation is str and type(value) is str:
        return value
    if annotation is int and not info.clamp:
        if type(value) is int:
            number = value
        elif type(value) is str and _DECIMAL.fullmatch(value):
            number = int(value)
        else:
            return _SLOW
        if (info.min is None or number >= info.min) and (info.max is None or number <= info.max):
            return number
    return _SLOW


class _LazyRuntimeParam:
    """Typer's runtime coercion, with pydantic (~100 ms of imports) built only if needed."""

    __slots__ = ("_build", "_descriptor", "_real")

    def __init__(self, build: Callable[[Any], Any], descriptor: Any) -> None:  # noqa: ANN401
        self._build = build
        self._descriptor = descriptor
        self._real: Any = None

    def coerce(self, value: object, param: Any, ctx: Any) -> object:  # noqa: ANN401
        fast = _fast_value(self._descriptor, param, value)
        if fast is not _SLOW:
            return fast
        if self._real is None:
            self._real = self._build(self._descriptor)
        return self._real.coerce(value, param=param, ctx=ctx)


def _lazy_coercion() -> None:
    """Make Typer (0.2x) coerce plain values without pydantic; see :class:`_LazyRuntimeParam`.

    Typer builds a pydantic TypeAdapter for every parameter it processes, even an absent
    ``--config`` on the way to ``jobs --help``. A Typer without that hook is left alone.
    """
    core = getattr(typer, "core", None)
    build = getattr(core, "build_runtime_param", None)
    if build is None or getattr(build, "homeops_lazy", False):
        return

    def lazy(descriptor: Any) -> _LazyRuntimeParam:  # noqa: ANN401
        return _LazyRuntimeParam(build, descriptor)

    lazy.homeops_lazy = True  # type: ignore[attr-defined]
    core.build_runtime_param = lazy  # type: ignore[union-attr]


def _command_names(command: Any) -> set[str]:  # noqa: ANN401
    # Lazily built domain groups (core/cli/lazy.py) are names too, before they are built.
    names: set[str] = set(getattr(command, "lazy_names", ()))
    for name, sub in getattr(command, "commands", {}).items():
        names.add(name)
        names |= _command_names(sub)
    return names


def run_app(
    build: Callable[[], typer.Typer],
    args: Sequence[str],
    *,
    prog_name: str,
    seed: str | None = None,
) -> int:
    """Run a Typer app as a console script and return its exit code.

    Usage errors (Typer's three-line "Usage/Try/Error" block), :class:`HomeopsError` and
    OS errors nobody translated all become one ``error: ...`` line: this is the one place
    errors are printed, for the core's commands and every domain's alike.
    """
    from homeops.core.errors import ConfigError, ExitCode, HomeopsError

    exceptions = _click_exceptions()
    debug = "--debug" in args
    previous = _terminate_like_interrupt()
    try:
        _lazy_coercion()
        app = build()
        command = typer.main.get_command(app)
        opts, rest = split_global_options(args, _command_names(command))
        opts = GlobalOptions(opts.config, opts.debug, seed)
        result = command.main(args=rest, prog_name=prog_name, obj=opts, standalone_mode=False)
    except exceptions.NoArgsIsHelpError as exc:
        # `homeops jobs` alone asks what is there: the help is the answer, on stdout, exit 0
        # (as `--help`), not an error.
        write_stdout(exc.format_message() + "\n")
        return int(ExitCode.OK)
    except exceptions.UsageError as exc:
        message = exc.format_message()
        if exc.ctx is not None:
            message += f" (see '{exc.ctx.command_path} --help')"
        report_error(message)
        if _asks_json(args):
            # Refused before the command ran, so its json_errors never saw it: the same object.
            _print_failure({}, error_line(message), int(ExitCode.USAGE), one_line=False)
        return int(ExitCode.USAGE)
    except exceptions.ClickException as exc:
        report_error(exc.format_message())
        return int(exc.exit_code)
    except typer.Abort:
        report_error("aborted")
        return int(ExitCode.FAILURE)
    except Terminated:
        sys.stderr.write("terminated\n")
        return 128 + signal.SIGTERM
    except ConfigError as exc:
        # Its message already starts "config error: ", as the docs show it.
        report_error(str(exc), prefix="")
        return int(exc.exit_code)
    except HomeopsError as exc:
        report_error(str(exc))
        return int(exc.exit_code)
    except OSError as exc:
        # A filesystem error no layer translated: still one line, not a traceback
        # (--debug keeps the traceback for whoever is fixing that layer).
        if debug:
            raise
        report_error(os_error_message(exc))
        return int(ExitCode.FAILURE)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if result == _INTERRUPTED:
        # Typer turns Ctrl-C into Exit(130) before we see it; say why the command stopped.
        sys.stderr.write("interrupted\n")
    return result if isinstance(result, int) else int(ExitCode.OK)


def _asks_json(args: Sequence[str]) -> bool:
    """``--json`` among our own options (not among the words after ``--``, a remote
    command's)."""
    words = list(args)
    if "--" in words:
        words = words[: words.index("--")]
    return "--json" in words


_INTERRUPTED: Final = 128 + signal.SIGINT


class Terminated(BaseException):
    """SIGTERM arrived in a short command: unwinds like Ctrl-C (a BaseException, as that is)."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def _terminate_like_interrupt() -> signal.Handlers | Callable[..., object] | int | None:
    """Make SIGTERM unwind the command the way SIGINT does, so its children are killed.

    The default action ended `doctor` at once and left its probes (a hung `git --version`)
    running under init. Raised as an exception, SIGTERM cancels asyncio.run's tasks, and the
    process seam's cancellation kills each child's process group. Long-running commands
    (worker, supervise) replace this with their own loop handlers.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None  # signal handlers can only be set from the main thread (tests, embedding)
    return signal.signal(signal.SIGTERM, _raise_terminated)
