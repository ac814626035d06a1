"""Observability hooks and uncertainty probes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

logger = logging.getLogger("sentinel")

__all__ = [
    "Event",
    "Observer",
    "EVENT_KINDS",
    "UncertainKey",
    "Happened",
    "DidNotHappen",
    "Unknown",
    "ProbeAnswer",
    "Probe",
]

#: Every kind of event an observer can receive.
EVENT_KINDS = (
    "acquired",    # this call claimed the key and is about to run the function
    "replayed",    # a recorded response (or permanent failure) was handed back
    "alive",       # another worker holds a live lease
    "uncertain",   # the key is uncertain (met by a caller, or marked by this worker)
    "completed",   # the function returned and its response was recorded
    "failed",      # the function raised and the failure was recorded
    "fenced",      # a recording was refused: the fence was no longer current
    "lease_lost",  # the heartbeat learned the execution is no longer ours
    "reconciled",  # an operator or a probe resolved the key
)

_WARNING_KINDS = frozenset({"uncertain", "fenced", "lease_lost"})


@dataclass(frozen=True)
class Event:
    """Something that happened to a key, as told to observers.

    ``duration_s`` is the function's run time for ``completed`` and ``failed``
    (and the call's time otherwise); ``error`` the exception for ``failed``;
    ``details`` anything else worth knowing (for example ``reason``).
    """

    kind: str
    namespace: str
    key: str
    fence: Optional[int] = None
    attempt: Optional[int] = None
    duration_s: Optional[float] = None
    error: Optional[BaseException] = None
    details: Dict[str, Any] = field(default_factory=dict)


#: An observer is any callable taking an :class:`Event`. Exceptions it raises
#: are logged and never reach the caller of ``once()``.
Observer = Callable[[Event], None]


def emit(observers: Sequence[Observer], event: Event) -> None:
    """Log ``event`` on the ``sentinel`` logger and hand it to every observer."""
    level = logging.WARNING if event.kind in _WARNING_KINDS else logging.DEBUG
    if logger.isEnabledFor(level):
        logger.log(
            level, "%s %s/%s fence=%s", event.kind, event.namespace, event.key, event.fence,
            extra={
                "sentinel_event": event.kind,
                "sentinel_namespace": event.namespace,
                "sentinel_key": event.key,
                "sentinel_fence": event.fence,
                "sentinel_attempt": event.attempt,
                "sentinel_duration_s": event.duration_s,
                **{f"sentinel_{k}": v for k, v in event.details.items()},
            },
        )
    for observer in observers:
        try:
            observer(event)
        except Exception:
            logger.exception("observer %r failed on %s", observer, event.kind)


# -- probes -------------------------------------------------------------------


@dataclass(frozen=True)
class UncertainKey:
    """What a probe is told about an uncertain key: the record as ``inspect`` shows it."""

    namespace: str
    key: str
    fence: int
    attempt: int
    record: Dict[str, Any]


class ProbeAnswer:
    """What a probe found out about an uncertain execution."""


@dataclass(frozen=True)
class Happened(ProbeAnswer):
    """The effect happened; ``response`` is recorded as the key's response and replayed."""

    response: Any


@dataclass(frozen=True)
class DidNotHappen(ProbeAnswer):
    """The effect did not happen; the key is released and the function runs again."""

    reason: str = "the probe found no effect"


@dataclass(frozen=True)
class Unknown(ProbeAnswer):
    """The probe could not tell; the key stays uncertain."""

    reason: str = "the probe could not tell"


#: A probe asks the real system whether an uncertain execution had its effect
#: (for example: look the charge up at the payment provider by key).
Probe = Callable[[UncertainKey], ProbeAnswer]


def probe_name(probe: Probe) -> str:
    """The actor recorded for a probe's reconcile: ``probe:<qualified name>``."""
    name = getattr(probe, "__qualname__", None) or type(probe).__qualname__
    module = getattr(probe, "__module__", None)
    return f"probe:{module}.{name}"[:200] if module else f"probe:{name}"[:200]
