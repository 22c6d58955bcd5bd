"""Layered settings: built-in defaults -> one JSON file -> environment variables.

Each domain declares one pydantic model (sections are nested models) and a
:class:`SettingsSpec` naming its env prefix and its ``*_CONFIG`` variable. Environment names
are derived from the field path (``windows`` prefix ``WIN_AUTOMATION`` + ``playwright.host``
-> ``WIN_AUTOMATION_PLAYWRIGHT_HOST``), and a field may list extra names with
:func:`env_names` for the seeds' historical spellings.

Secrets are :class:`pydantic.SecretStr` fields. Besides the value itself they can be read
from a file: ``<VAR>_FILE`` in the environment, or ``"<field>_file": "/path"`` in the JSON file
(what a NixOS module renders from ``tokenFile``). Secret values are registered with the logger
so they are masked in every line.

Names of one setting must agree: two of its environment names set to different values, or
a secret given both as ``<VAR>`` and ``<VAR>_FILE``, is refused naming both (another tool's
names from ``extra_env`` rank below the field's own). An empty secret file is refused.
Paths are made absolute (against the current directory) when loaded. Addresses and paths
have annotated types checked at load (:data:`HttpUrlStr`, :data:`HostPort`,
:data:`Hostname`, :data:`LoginName`, :data:`ExistingFile`, :data:`FileLocation`,
:data:`DirLocation`), so a bad one is a ConfigError naming its variable or file and field.

pydantic-settings was considered: its env source cannot say which layer a value came from
(``config show`` must) and its nested delimiter cannot express the seeds' names, where ``_``
both nests and appears inside field names. So the layering is this small module, and
pydantic does the validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import json
import math
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Annotated, Any, Final, Generic, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    TypeAdapter,
    ValidationError,
)

from homeops.core.durations import format_duration, parse_duration
from homeops.core.errors import ConfigError, json_type_name, quote_input
from homeops.core.logging import get_logger, register_secret
from homeops.core.paths import directory_problem, file_problem, resolve_path
from homeops.core.paths import expand_path as expand_path  # re-exported: callers use it here

_log = get_logger("core.config")

DEFAULT = "default"
FILE_SUFFIX = "_file"


def _to_seconds(value: object) -> object:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return parse_duration(value)
    return value


Duration = Annotated[
    float,
    BeforeValidator(_to_seconds),
    Field(ge=0),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""Seconds, written as ``30s``/``10m``/``1h30m`` in files and env, shown the same way."""

PositiveDuration = Annotated[Duration, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


# -- addresses: checked when the settings load, not when a command first uses them ----------

# One DNS label (RFC 1123, plus "_" which internal names use): no leading/trailing "-".
_LABEL: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _no_blanks(text: str, what: str) -> None:
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"{what} contains whitespace or control characters")


def check_hostname(value: str) -> str:
    """``value`` trimmed if it is a host name or an IP address; ValueError otherwise.

    A leading ``-`` is refused outright: a host or user handed to ssh as ``-oProxyCommand=…``
    is an option, not a name.
    """
    text = value.strip()
    if not text:
        raise ValueError("empty host")
    if text.startswith("-"):
        raise ValueError("a host must not start with '-'")
    _no_blanks(text, "host")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return text
    if text.startswith("["):
        raise ValueError("write an IPv6 address without brackets here")
    name = text.removesuffix(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError("not a host name or IP address")
    return text


def _check_port_text(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ValueError("port must be 1-65535")
    return int(text)


def check_host_port(value: str) -> str:
    """``value`` trimmed if it is ``host:port`` (``[v6]:port`` for IPv6); ValueError otherwise."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("expected [IPv6 address]:port") from None
        if not sep:
            raise ValueError("expected [IPv6 address]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("expected host:port")
        if ":" in host:
            raise ValueError("write an IPv6 address as [address]:port")
        check_hostname(host)
    _check_port_text(port)
    return text


def check_http_url(value: str) -> str:
    """``value`` trimmed if it is an http(s) URL with a valid host and port."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        # "Port out of range 0-65535", "Port could not be cast ...", "Invalid IPv6 URL".
        raise ValueError(f"not a valid URL: {str(exc).lower()}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("not an http(s) URL")
    # urlsplit silently drops tabs and newlines, and a space is never part of a URL.
    _no_blanks(text, "URL")
    if not parts.hostname:
        raise ValueError("URL has no host")
    if "@" in parts.netloc:
        # config show and every log line would print the password.
        raise ValueError("no user or password in the URL")
    if port == 0:
        raise ValueError("port must be 1-65535")
    if parts.netloc.endswith(":"):
        raise ValueError("URL has an empty port")
    check_hostname(parts.hostname)
    return text


def check_login_name(value: str) -> str:
    """``value`` if it can be a login name on a command line: not empty, no leading ``-``,
    no whitespace or control characters (``DOMAIN\\user`` and ``user@domain`` pass)."""
    if not value:
        raise ValueError("empty user name")
    if value.startswith("-"):
        raise ValueError("a user name must not start with '-'")
    _no_blanks(value, "user name")
    return value


Hostname = Annotated[str, AfterValidator(check_hostname)]
"""A host name or IP address (no brackets, no port)."""
HostPort = Annotated[str, AfterValidator(check_host_port)]
"""``host:port``, ``[IPv6]:port``: a gRPC address, say."""
HttpUrlStr = Annotated[str, AfterValidator(check_http_url)]
"""An ``http://`` or ``https://`` URL with a host, kept as the string given (trimmed)."""
LoginName = Annotated[str, AfterValidator(check_login_name)]
"""A user name passed to ssh and the like."""


# -- filesystem paths: what can be decided from a stat, without reading the file -----------


def _check_existing_file(path: Path) -> Path:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise ValueError("is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise ValueError("not a regular file")
    if not os.access(path, os.R_OK):
        raise ValueError("cannot be read: permission denied")
    return path


def _check_file_location(path: Path) -> Path:
    problem = file_problem(path)
    if problem is not None:
        raise ValueError(problem)
    return path


def _check_directory_location(path: Path) -> Path:
    problem = directory_problem(path)
    if problem is not None:
        raise ValueError(problem)
    return path


ExistingFile = Annotated[Path, AfterValidator(_check_existing_file)]
"""A file that must exist and be readable when the settings load (an SSH private key)."""
FileLocation = Annotated[Path, AfterValidator(_check_file_location)]
"""A file that may not exist yet, but is not a directory (known_hosts, a log)."""
DirLocation = Annotated[Path, AfterValidator(_check_directory_location)]
"""A directory that may not exist yet, but is not a file (a state dir, an artifact root)."""


class Section(BaseModel):
    """Base of every settings model and section: unknown keys are errors, values frozen."""

    # allow_inf_nan=False: "inf" or 1e400 days is never a meaningful setting.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


def env_names(*names: str) -> dict[str, Any]:
    """``json_schema_extra`` listing extra environment names for a field, e.g. a seed's."""
    return {"env": list(names)}


M = TypeVar("M", bound=Section)


@dataclass(frozen=True)
class SettingsSpec(Generic[M]):
    """How one domain's settings are found: model, env prefix, config-file variable."""

    model: type[M]
    env_prefix: str
    config_env: str
    # Defaults that depend on the environment (XDG paths): environ -> partial data.
    dynamic_defaults: Callable[[Mapping[str, str]], dict[str, Any]] | None = None
    # More environment names per dotted field, after the field's own: how a seed tool's
    # spellings (WIN_AUTOMATION_ARTIFACT_OUT) reach a setting another spec owns.
    extra_env: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The seed tool's own file when neither --config nor config_env names one, if it exists
    # (svc reads /etc/svc/services.json, which its NixOS module writes).
    default_config: Path | None = None

    def seed_file(self, environ: Mapping[str, str]) -> Path | None:
        """The seed tool's file: ``config_env``'s, else ``default_config`` if it exists."""
        named = env_path(environ, self.config_env)
        if named is not None:
            return named
        if self.default_config is not None and self.default_config.is_file():
            return self.default_config
        return None

    def with_extra_env(self, extra: Mapping[str, Sequence[str]]) -> SettingsSpec[M]:
        """This spec with ``extra`` environment names appended (dotted field -> names)."""
        merged = {key: tuple(names) for key, names in self.extra_env.items()}
        for key, names in extra.items():
            merged[key] = (
                *merged.get(key, ()),
                *(n for n in names if n not in merged.get(key, ())),
            )
        return dataclasses.replace(self, extra_env=merged)


@dataclass(frozen=True)
class Loaded(Generic[M]):
    """Validated settings plus where each leaf value came from."""

    settings: M
    sources: Mapping[str, str]
    config_path: Path | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class _Leaf:
    path: tuple[str, ...]
    annotation: Any
    env: tuple[str, ...]
    # env[:own] are the field's own names; the rest another tool's (SettingsSpec.extra_env),
    # which rank below them: HOMEOPS_ARTIFACTS_ROOT wins over WIN_AUTOMATION_ARTIFACT_OUT.
    own: int

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def _is_model(annotation: Any) -> bool:  # noqa: ANN401
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _union_args(annotation: Any) -> tuple[Any, ...]:  # noqa: ANN401
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        # Each member unwrapped too: ``ExistingFile | None`` is a path.
        return tuple(a for arg in typing.get_args(annotation) for a in _union_args(arg))
    if origin is Annotated:
        return _union_args(typing.get_args(annotation)[0])
    return (annotation,)


def is_secret(annotation: Any) -> bool:  # noqa: ANN401
    """Whether a field annotation is a secret string (optionally ``| None``)."""
    return any(arg is SecretStr for arg in _union_args(annotation))


def _is_structured(annotation: Any) -> bool:  # noqa: ANN401
    return any(typing.get_origin(a) in (list, dict, tuple, set) for a in _union_args(annotation))


def _is_path(annotation: Any) -> bool:  # noqa: ANN401
    return any(isinstance(a, type) and issubclass(a, PurePath) for a in _union_args(annotation))


@functools.cache
def _strict_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = model.model_fields[name]
    annotation: Any = info.annotation
    if info.metadata:
        # The constraints and validators (durations, ranges) live in the metadata, not the type.
        annotation = Annotated[(annotation, *info.metadata)]
    return TypeAdapter(annotation)


def _check_file_value(
    model: type[BaseModel], name: str, value: object, label: str, where: str
) -> None:
    """Validate one value from the JSON file as JSON, strictly: no type coercion.

    Lax validation is right for environment variables, which are strings by nature, but a
    file that says ``"slots": true`` or ``"retention_days": false`` has a mistake in it
    (the latter once meant 0 days: a sweep deleted everything). JSON-mode strictness still
    takes strings for paths and secrets, and durations like ``"30s"`` are parsed first.
    """
    try:
        _strict_adapter(model, name).validate_json(json.dumps(value), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = _reason({**first, "input": None})
        # Inside a list or mapping value (svc's services): name the item and its field.
        # pydantic marks a refused mapping key with a "[key]" part after the key itself.
        inner = ".".join(str(part) for part in first.get("loc", ()) if part != "[key]")
        if inner:
            where = f"{where}.{inner}"
            value = first.get("input")
        if is_secret(model.model_fields[name].annotation):
            raise ConfigError(label, where, msg) from None
        if _is_non_finite(value) and _is_numeric_error(first):
            msg = NOT_A_NUMBER
        raise ConfigError(label, where, f"{msg} (got {quote_input(value, json.dumps)})") from None


def _leaves(
    model: type[BaseModel],
    prefix: str,
    path: tuple[str, ...] = (),
    extra_env: Mapping[str, tuple[str, ...]] | None = None,
) -> Iterator[_Leaf]:
    for name, info in model.model_fields.items():
        here = (*path, name)
        if _is_model(info.annotation):
            sub = typing.cast(type[BaseModel], info.annotation)
            yield from _leaves(sub, prefix, here, extra_env)
            continue
        primary = "_".join((prefix, *here)).upper()
        extra = info.json_schema_extra
        aliases = extra.get("env", []) if isinstance(extra, dict) else []
        names = (primary, *(str(a) for a in typing.cast(list[object], aliases)))
        own = len(names)
        if extra_env:
            names = (*names, *(n for n in extra_env.get(".".join(here), ()) if n not in names))
        yield _Leaf(here, info.annotation, names, own)


def _spec_leaves(spec: SettingsSpec[Any]) -> Iterator[_Leaf]:
    return _leaves(spec.model, spec.env_prefix, (), spec.extra_env)


def leaves(spec: SettingsSpec[Any]) -> list[tuple[str, tuple[str, ...], bool]]:
    """(dotted path, env names, is secret) of every leaf field: for docs and ``--help``."""
    return [(leaf.dotted, leaf.env, is_secret(leaf.annotation)) for leaf in _spec_leaves(spec)]


MISSING: Any = object()
"""What :func:`get_path` returns where nothing is (None is a value a file can hold)."""


def get_path(data: object, path: Sequence[str]) -> Any:  # noqa: ANN401 - JSON data
    """The value at ``path`` in nested mappings, or :data:`MISSING`."""
    node = data
    for key in path:
        node = node.get(key, MISSING) if isinstance(node, Mapping) else MISSING
    return node


def set_path(data: dict[str, Any], path: Sequence[str], value: object) -> None:
    """Set ``value`` at ``path`` in nested dicts, creating the missing levels."""
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


# Config and secret files are small; a bound keeps `--config /dev/zero` from eating memory.
MAX_CONFIG_BYTES = 1 << 20
MAX_SECRET_BYTES = 64 << 10


def read_small_file(path: Path, limit: int) -> bytes:
    """Bytes of a regular file of at most ``limit`` bytes; OSError/ValueError otherwise."""
    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before fstat can refuse it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    # fstat before fdopen: fdopen of a directory raises and would leak the descriptor.
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise ValueError("not a regular file")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit // 1024} KiB")
    return data


def _read_secret_file(path_text: str, source: str, where: str, environ: Mapping[str, str]) -> str:
    try:
        path = Path(resolve_path(path_text, environ))
    except ValueError as exc:
        raise ConfigError(source, where, str(exc)) from None
    try:
        raw = read_small_file(path, MAX_SECRET_BYTES)
        value = raw.decode("utf-8").rstrip("\r\n")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, UnicodeDecodeError):
            reason = "not UTF-8 text"
        message = f"cannot read secret file {quote_input(path_text)}: {reason}"
        raise ConfigError(source, where, message) from exc
    if not value.strip():
        # An empty credential (a LoadCredential file not filled in yet) would count as
        # configured: config show says ***, doctor runs the check and it fails for auth.
        raise ConfigError(source, where, f"secret file is empty: {quote_input(str(path))}")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _no_constants(name: str) -> Any:  # noqa: ANN401
    # Python's json accepts NaN and Infinity, which are not JSON and make no sense as settings.
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text: str) -> Any:  # noqa: ANN401
    """JSON as the config files are read: duplicate keys and NaN/Infinity are ValueErrors."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _read_json(path: Path) -> dict[str, Any]:
    label = str(path)
    try:
        raw = read_small_file(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(label, "", f"cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(label, "", f"cannot read: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(label, "", f"not UTF-8 text (byte {exc.start})") from exc
    try:
        data = loads_strict(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            label, "", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except RecursionError:
        raise ConfigError(label, "", "invalid JSON: nested too deeply") from None
    except ValueError as exc:
        # Duplicate keys, NaN/Infinity, integers past Python's digit limit.
        raise ConfigError(label, "", f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(label, "", f"top level must be a JSON object, not {json_type_name(data)}")
    return data


def _check_file_keys(
    model: type[BaseModel],
    data: Mapping[str, Any],
    label: str,
    environ: Mapping[str, str],
    path: tuple[str, ...] = (),
    extra_candidates: Sequence[str] = (),
) -> dict[str, Any]:
    """Refuse unknown keys (with a suggestion) and wrongly typed values; expand paths;
    resolve ``<secret>_file`` keys. ``extra_candidates`` are more names worth suggesting
    for an unknown key (the domain sections of the umbrella file)."""
    out: dict[str, Any] = {}
    fields = model.model_fields
    for key, value in data.items():
        here = ".".join((*path, key))
        if key in fields:
            annotation = fields[key].annotation
            if _is_model(annotation):
                if not isinstance(value, Mapping):
                    kind = json_type_name(value)
                    raise ConfigError(label, here, f"expected an object (section), got {kind}")
                sub = typing.cast(type[BaseModel], annotation)
                out[key] = _check_file_keys(sub, value, label, environ, (*path, key))
                continue
            if isinstance(value, str) and _is_path(annotation):
                # Resolved first: a check of the file (it exists, it is not a directory)
                # must see the path that will be used, not "~/id" or "id".
                try:
                    value = resolve_path(value, environ)
                except ValueError as exc:
                    raise ConfigError(label, here, str(exc)) from None
            _check_file_value(model, key, value, label, here)
            out[key] = value
            continue
        base = key.removesuffix(FILE_SUFFIX)
        if key.endswith(FILE_SUFFIX) and base in fields and is_secret(fields[base].annotation):
            if not isinstance(value, str):
                raise ConfigError(label, here, "expected a file path string")
            if base in data:
                raise ConfigError(label, here, f"give either {base!r} or {key!r}, not both")
            out[base] = _read_secret_file(value, label, here, environ)
            continue
        secrets = [f + FILE_SUFFIX for f in fields if is_secret(fields[f].annotation)]
        candidates = [*fields, *secrets, *extra_candidates]
        close = difflib.get_close_matches(key, candidates, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise ConfigError(label, here, f"unknown key{hint}")
    return out


NOT_A_NUMBER: Final = "not a number"

# pydantic error types about a number's value or form: where "nan" or "inf" shows up as
# "should be greater than or equal to 0" or "unable to parse string as an integer".
_NUMERIC_ERRORS: Final = ("int_", "float_", "finite_number", "greater_than", "less_than")


def _is_numeric_error(error: Mapping[str, Any]) -> bool:
    return str(error.get("type", "")).startswith(_NUMERIC_ERRORS)


def _is_non_finite(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    try:
        return not math.isfinite(float(value))
    except (ValueError, OverflowError):
        return False


def _reason(error: Mapping[str, Any], *, secret: bool = False) -> str:
    msg = str(error.get("msg", "invalid value"))
    for noise in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(noise)
    if error.get("type") == "missing":
        return "required value missing"
    value = error.get("input")
    if _is_numeric_error(error) and (error.get("type") == "finite_number" or _is_non_finite(value)):
        msg = NOT_A_NUMBER
    # A secret's value is never echoed, not even when it is wrong.
    if secret:
        return msg
    if error.get("type") != "extra_forbidden" and isinstance(value, str | int | float):
        shown = quote_input(value)
        # "invalid duration 'soon' (...)" quotes the value already.
        quoted_already = isinstance(value, str) and shown in msg
        return msg if quoted_already else f"{msg} (got {shown})"
    return msg


def _env_text(leaf: _Leaf, name: str, text: str, environ: Mapping[str, str]) -> object:
    """One variable's text as the layer's value: JSON for lists, a resolved path."""
    if _is_structured(leaf.annotation):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(name, leaf.dotted, f"expected JSON: {exc.msg}") from exc
    if _is_path(leaf.annotation):
        try:
            return resolve_path(text, environ)
        except ValueError as exc:
            raise ConfigError(name, leaf.dotted, str(exc)) from None
    return text


def _env_value(leaf: _Leaf, environ: Mapping[str, str]) -> tuple[str, object] | None:
    """(variable, value) the environment gives ``leaf``, or None.

    A setting may have several names (the seed's spellings, ``<VAR>_FILE`` for a secret).
    Two of them set is refused unless they agree: which one "wins" is an ordering nobody
    can see from outside, and the loser silently configures nothing. A secret given both
    as a value and as a file is refused as it is in the JSON file. Another tool's names
    (``extra_env``) rank below the field's own, as README documents.
    """
    secret = is_secret(leaf.annotation)
    chosen: tuple[str, object] | None = None
    for tier in (leaf.env[: leaf.own], leaf.env[leaf.own :]):
        values: list[tuple[str, object]] = []
        files: list[tuple[str, str]] = []
        for name in tier:
            # An empty variable counts as unset (`VAR=` in an EnvironmentFile, say):
            # HOMEOPS_STATE_DIR= must not mean "the current directory".
            if environ.get(name):
                values.append((name, _env_text(leaf, name, environ[name], environ)))
            file_var = name + "_FILE"
            if secret and environ.get(file_var):
                try:
                    where = resolve_path(environ[file_var], environ)
                except ValueError as exc:
                    raise ConfigError(file_var, leaf.dotted, str(exc)) from None
                files.append((file_var, where))
        if values and files:
            a, b = values[0][0], files[0][0]
            raise ConfigError(a, leaf.dotted, f"give either {a} or {b}, not both")
        for given in (values, files):
            if not given:
                continue
            first_name, first_value = given[0]
            for name, value in given[1:]:
                if value == first_value:
                    continue
                if given is files:
                    what = "a different file"
                elif secret:
                    what = "a different value"
                else:
                    shown = f"{quote_input(first_value)} vs {quote_input(value)}"
                    what = f"a different value ({shown})"
                reason = f"{name} is set too, to {what}; keep one of the two"
                raise ConfigError(first_name, leaf.dotted, reason)
        if chosen is None and values:
            chosen = values[0]
        elif chosen is None and files:
            file_var, where = files[0]
            chosen = (file_var, _read_secret_file(where, file_var, leaf.dotted, environ))
    return chosen


def env_path(environ: Mapping[str, str], name: str) -> Path | None:
    """The config file a ``*_CONFIG`` variable names; None when unset or empty.

    Blank but not empty (``HOMEOPS_CONFIG=' '``, a quoting slip) is a ConfigError, as
    ``--config ' '`` is, rather than an attempt to read a file called " ".
    """
    value = environ.get(name)
    if not value:
        return None
    if not value.strip():
        raise ConfigError(name, "", "empty path (unset the variable to use no file)")
    return Path(value)


def read_config_file(path: Path) -> dict[str, Any]:
    """The top-level object of a JSON config file; :class:`ConfigError` naming the file."""
    return _read_json(path)


def load_settings(
    spec: SettingsSpec[M],
    *,
    environ: Mapping[str, str],
    config_path: Path | None = None,
    file_data: Mapping[str, Any] | None = None,
    section: tuple[str, ...] = (),
    extra_candidates: Sequence[str] = (),
    also_known_env: Collection[str] = (),
    overlay: tuple[str, Mapping[str, Any]] | None = None,
) -> Loaded[M]:
    """Build the effective settings; any bad input raises :class:`ConfigError` (exit 2).

    ``file_data`` is ``config_path``'s content when the caller has read it already (the
    umbrella file is read once for every domain); ``section`` is where this spec's keys
    live in it (``("windows",)``), which also prefixes every error's dotted field.
    ``also_known_env`` are names under this spec's prefix that another spec reads, so
    they are not reported as typos. ``overlay`` is (file label, data): values another file
    gives for these settings (a seed tool's own file), above this file and below the
    environment.
    """
    path = config_path if config_path is not None else env_path(environ, spec.config_env)
    data: dict[str, Any] = spec.dynamic_defaults(environ) if spec.dynamic_defaults else {}
    sources: dict[str, str] = {}

    def file_layer(raw: object, label: str, where: tuple[str, ...] = ()) -> None:
        nonlocal data
        layer = raw if isinstance(raw, Mapping) else {}
        checked = _check_file_keys(spec.model, layer, label, environ, where, extra_candidates)
        data = _merge(data, checked)
        for leaf in _spec_leaves(spec):
            if get_path(checked, leaf.path) is not MISSING:
                sources[leaf.dotted] = f"file:{label}"

    file_label = ""
    if path is not None:
        file_label = str(path)
        whole = _read_json(path) if file_data is None else file_data
        file_layer(get_path(whole, section), file_label, section)
    if overlay is not None:
        file_layer(overlay[1], overlay[0])
    env_data: dict[str, Any] = {}
    known_env = {spec.config_env, *also_known_env}
    for leaf in _spec_leaves(spec):
        secret = is_secret(leaf.annotation)
        known_env.update(leaf.env)
        if secret:
            known_env.update(n + "_FILE" for n in leaf.env)
        found = _env_value(leaf, environ)
        if found is not None:
            name, value = found
            set_path(env_data, leaf.path, value)
            sources[leaf.dotted] = f"env:{name}"
    warnings = _stray_env(environ, spec.env_prefix, known_env)
    for text in warnings:
        _log.warn("load", text)
    data = _merge(data, env_data)
    secret_paths = {path for path, _, secret in leaves(spec) if secret}
    try:
        settings = spec.model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        parts = [str(p) for p in first["loc"] if p != "[key]"]
        loc = ".".join(parts)
        # Inside a structured value (svc's services), the layer that set the whole value.
        prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
        origin = next((sources[k] for k in prefixes if k in sources), "")
        label = origin.split(":", 1)[1] if origin else (file_label or "defaults")
        more = exc.error_count() - 1
        secret = loc in secret_paths
        reason = _reason(first, secret=secret)
        reason += f" (and {more} more error{'s' * (more > 1)})" if more else ""
        # A value from the file is named where it is in the file; one from the
        # environment already names its variable.
        shown_loc = ".".join((*section, loc)) if not origin.startswith("env:") else loc
        raise ConfigError(label, shown_loc, reason) from None
    for leaf in _spec_leaves(spec):
        sources.setdefault(leaf.dotted, DEFAULT)
        if is_secret(leaf.annotation):
            secret_value = _get(settings, leaf.path)
            if isinstance(secret_value, SecretStr):
                register_secret(secret_value.get_secret_value())
    return Loaded(settings, sources, path, tuple(warnings))


def _get(obj: object, path: tuple[str, ...]) -> object:
    for key in path:
        obj = getattr(obj, key)
    return obj


def _stray_env(environ: Mapping[str, str], prefix: str, known: set[str]) -> list[str]:
    """Variables under our prefix that match no field are probably typos: warn, don't fail."""
    stray = []
    for name in sorted(environ):
        if name.startswith(prefix + "_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            stray.append(f"environment variable {name} matches no setting{hint}")
    return stray


def flatten(loaded: Loaded[Any]) -> list[tuple[str, object, str]]:
    """(dotted path, display value, source) rows; a set secret shows as ``***``."""
    dumped = loaded.settings.model_dump(mode="json")
    model = type(loaded.settings)
    secret_paths = {path for path, _, secret in leaves(_spec_of(model)) if secret}
    rows: list[tuple[str, object, str]] = []
    order = {path: i for i, (path, _, _) in enumerate(leaves(_spec_of(model)))}
    for dotted, source in sorted(loaded.sources.items(), key=lambda kv: order.get(kv[0], 0)):
        value: object = dumped
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if dotted in secret_paths and value is not None:
            value = "***"
        rows.append((dotted, value, source))
    return rows


def _spec_of(model: type[Section]) -> SettingsSpec[Any]:
    # Only the field structure matters for listing leaves; the prefix is irrelevant here.
    return SettingsSpec(model, "X", "X_CONFIG")
