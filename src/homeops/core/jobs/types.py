"""Job types: a name, the payload model it accepts, the handler that runs it, its retry rule.

A domain registers its job types through the registry (``Registry.add_job_types``); the CLI
validates an enqueue against them, so no job is stored that no handler could ever parse, and
the worker hands each handler the parsed payload model, not a raw dict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from homeops.core.jobs.worker import JobContext

P = TypeVar("P", bound=BaseModel)

RetryRule = Callable[[BaseException], bool]
"""Whether a failed attempt is retried (when attempts remain), decided from its exception."""


@dataclass(frozen=True)
class JobType(Generic[P]):
    """One kind of job: ``<domain>.<verb>``, its payload model, its handler and retry rule.

    ``retryable``: ``True`` for the core rule (``core.retry.is_retryable_job_error``),
    ``False`` for never, or a predicate of its own.
    """

    name: str
    payload_model: type[P]
    handler: Callable[[JobContext, P], Awaitable[Any]]
    retryable: bool | RetryRule = True
    description: str = ""
