"""Job types: a name, the payload model it accepts, the handler that runs it, its retry rule.

A domain registers its job types through the registry (``Registry.add_job_types``); the CLI
validates an enqueue against them (:func:`validate_enqueue`), so no job is stored that no
handler could ever parse, and the worker hands each handler the parsed payload model
(:func:`parse_payload`), not a raw dict.

A payload is JSON (``--payload``, the store's column), so it is validated as JSON, strictly:
``true`` is not a number and ``"3"`` is not an int (the config file's rule: ``"retention_days":
false`` once meant 0 days). Strings still become paths, datetimes and enums, as JSON has
nothing else for them. Enqueue and worker use the same function, so the worker parses exactly
what enqueue accepted, and the stored payload is the model's own JSON dump.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from homeops.core.errors import UsageError
from homeops.core.logging import get_logger

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

    from homeops.core.jobs.worker import JobContext

P = TypeVar("P", bound="BaseModel")

RetryRule = Callable[[BaseException], bool]
"""Whether a failed attempt is retried (when attempts remain), decided from its exception."""

_log = get_logger("core.jobs")


@dataclass(frozen=True)
class JobType(Generic[P]):
    """One kind of job: ``<domain>.<verb>``, its payload model, its handler and retry rule.

    ``retryable``: ``True`` for the core rule (``core.retry.is_retryable_job_error``),
    ``False`` for never, or a predicate of its own. ``close`` releases shared resources.
    """

    name: str
    payload_model: type[P]
    handler: Callable[[JobContext, P], Awaitable[Any]]
    retryable: bool | RetryRule = True
    description: str = ""
    # Releases what the handlers share (a domain's SSH pool), once the worker has stopped and
    # no handler runs any more. Types sharing one resource may share one callable: it is
    # awaited once.
    close: Callable[[], Awaitable[None]] | None = None
    # How long a stopped handler may take to clean up once cancelled (a backup starts its
    # containers again and runs its post hook); a stopping worker waits the longest of its
    # running jobs' (never less than its own few seconds) before giving up on them.
    unwind_s: float | None = None


class PayloadError(UsageError):
    """A payload its job type's model refuses; the message names the dotted field."""


def _describe_validation(job_type: JobType[Any], exc: ValidationError) -> str:
    """One line: the first refused field (dotted) and why, plus how many more there are."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    reason = str(first["msg"])
    if first["type"] == "extra_forbidden":
        fields = ", ".join(job_type.payload_model.model_fields) or "none"
        reason = f"unknown field (known: {fields})"
    more = len(errors) - 1
    tail = f" (and {more} more error{'s' * (more > 1)})" if more else ""
    return f"{loc or '(payload)'}: {reason}{tail}"


def parse_payload(job_type: JobType[P], data: Mapping[str, Any]) -> P:
    """``data`` as ``job_type``'s model, validated as JSON in strict mode.

    :class:`PayloadError` (a usage error, exit 2, never retried) naming the field otherwise.
    """
    from pydantic import ValidationError

    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:  # only a payload built in Python can get here
        raise PayloadError(f"payload for job type {job_type.name!r}: not JSON: {exc}") from None
    try:
        return job_type.payload_model.model_validate_json(text, strict=True)
    except ValidationError as exc:
        detail = _describe_validation(job_type, exc)
        raise PayloadError(f"payload for job type {job_type.name!r}: {detail}") from None


def validate_enqueue(
    job_types: Mapping[str, JobType[Any]], type: str, payload: Mapping[str, Any]
) -> dict[str, Any]:
    """The payload to store for a job of ``type``, or :class:`UsageError` (exit 2).

    Refuses a type nobody registered (naming the registered ones) and a payload its model
    refuses (naming the field). The result is the model's JSON dump: defaults filled in,
    so the worker later parses exactly what was validated here. Domain CLIs that build the
    payload from their own flags (``win-automation jobs enqueue --type windows.exec --cmd
    …``) call this before ``JobClient.enqueue`` too.
    """
    from homeops.core.jobs.model import validate_job_type

    validate_job_type(type)
    job_type = job_types.get(type)
    if job_type is None:
        known = ", ".join(sorted(job_types)) or "none"
        raise UsageError(f"unknown job type {type!r} (registered: {known})")
    model = parse_payload(job_type, payload)
    dumped: dict[str, Any] = model.model_dump(mode="json")
    return dumped


def should_retry(job_type: JobType[Any], exc: BaseException) -> bool:
    """The type's retry rule applied to a failed attempt's exception.

    A rule that itself raises is a bug in the rule, not a verdict on the job: it is logged
    and the core rule decides instead.
    """
    from homeops.core.retry import is_retryable_job_error

    rule = job_type.retryable
    if rule is True:
        return is_retryable_job_error(exc)
    if rule is False:
        return False
    try:
        verdict = rule(exc)
    except Exception as bug:
        _log.error(
            "retry", "retry rule raised; using the core rule", job_type=job_type.name, err=bug
        )
        return is_retryable_job_error(exc)
    return bool(verdict)
