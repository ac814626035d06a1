"""The framework-free part of HTTP ``Idempotency-Key`` handling, shared by the Django decorator and the ASGI middleware.

Nothing here does I/O or imports a web framework: the record key of a
(scope, key) pair, the request fingerprint, what a malformed or unscoped key
is answered, what a key's state is answered (409s), and the JSON document a
response is recorded as.
"""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from .._results import Result

__all__ = [
    "Answer",
    "DEFAULT_HARD_TTL_MS",
    "MAX_KEY_LENGTH",
    "REPLAYED_HEADER",
    "SAFE_METHODS",
    "STORED_HEADERS",
    "document",
    "document_body",
    "document_headers",
    "fingerprint",
    "key_reused",
    "record_key",
    "refusal",
    "retry_after",
    "state_answer",
    "valid_key",
]

#: Added to every replayed response.
REPLAYED_HEADER = "Idempotent-Replayed"
#: Response headers recorded and replayed by default.
STORED_HEADERS = ("Content-Type", "Location")
#: The hard deadline of a handler's execution unless ``hard_ttl_ms`` says otherwise.
DEFAULT_HARD_TTL_MS = 60_000
MAX_KEY_LENGTH = 255
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class Answer(NamedTuple):
    """An answer given instead of running the handler: status, ``{"error", "detail"}`` and extra headers."""

    status: int
    error: str
    detail: str
    headers: Tuple[Tuple[str, str], ...] = ()

    def body(self) -> Dict[str, str]:
        """The JSON body: ``{"error": ..., "detail": ...}``."""
        return {"error": self.error, "detail": self.detail}


def valid_key(value: str) -> bool:
    """1 to 255 printable ASCII characters."""
    return 0 < len(value) <= MAX_KEY_LENGTH and all(" " <= ch <= "~" for ch in value)


def record_key(scope: str, idempotency_key: str) -> str:
    """The Sentinel key of an ``Idempotency-Key`` within a scope: ``http:<scope>:<key>``.

    ``:`` and ``%`` in the scope are percent-encoded, so no two (scope, key)
    pairs share a record; a scope over 200 bytes is replaced by its SHA-256.
    """
    part = scope.replace("%", "%25").replace(":", "%3A")
    if len(part.encode("utf-8")) > 200:
        part = "sha256-" + hashlib.sha256(scope.encode("utf-8")).hexdigest()
    return f"http:{part}:{idempotency_key}"


def fingerprint(method: str, full_path: str, body: bytes) -> str:
    """What must not change between retries of one key: method, path with query string, body."""
    body_hash = hashlib.sha256(body).hexdigest()
    text = f"{method}\n{full_path}\n{body_hash}"
    return "http-v1:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def refusal(given: Optional[str], owner: Optional[str], header: str) -> Optional[Answer]:
    """The 400 answer for a request whose key is missing, malformed or unscoped, or None."""
    if given is None:
        return Answer(400, "idempotency_key_missing", f"this endpoint requires an {header} header")
    if not valid_key(given):
        return Answer(400, "idempotency_key_invalid",
                      f"{header} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    if owner is None:
        return Answer(400, "idempotency_key_requires_authentication",
                      f"{header} is accepted only from authenticated clients")
    return None


def key_reused(header: str) -> Answer:
    """The 422 answer for a key used before with another method, path or body."""
    return Answer(422, "idempotency_key_reused", f"this {header} was used with another request (method, path or body)")


def state_answer(result: Result, header: str, retry_after_s: int = 1) -> Optional[Answer]:
    """The 409 answer for a key in flight, uncertain or failed; None when ``result`` holds a response."""
    if result.execution_alive:
        return Answer(409, "request_in_progress", f"a request with this {header} is being processed; retry later",
                      (("Retry-After", str(retry_after_s)),))
    if result.uncertain:
        return Answer(409, "outcome_uncertain",
                      f"the outcome of the request with this {header} is unknown (its processing was "
                      "interrupted); it will not be run again until it is resolved")
    if result.failed:
        return Answer(409, "request_failed",
                      f"the request with this {header} failed and will not be run again; use a new key")
    return None


def retry_after(record: Optional[Mapping[str, Any]]) -> int:
    """Seconds until a running execution's lease lapses (database clock, from ``inspect()``), at least 1."""
    if record and record.get("lease_expires_at") is not None and record.get("now") is not None:
        seconds: float = (record["lease_expires_at"] - record["now"]).total_seconds()
        return max(1, math.ceil(seconds))
    return 1


def document(status: int, reason: str, headers: Iterable[Tuple[str, str]], body: bytes) -> Dict[str, Any]:
    """The JSON document a response is recorded as: the body as text when it is UTF-8 without NUL, else base64."""
    doc: Dict[str, Any] = {"status": int(status), "reason": reason,
                           "headers": [[name, value] for name, value in headers]}
    try:
        text: Optional[str] = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:  # jsonb cannot hold NUL
        doc["body"] = text
    else:
        doc["body_base64"] = base64.b64encode(body).decode("ascii")
    return doc


def document_body(doc: Mapping[str, Any]) -> bytes:
    """The body of a recorded response document."""
    if "body" in doc:
        text: str = doc["body"]
        return text.encode("utf-8")
    return base64.b64decode(doc["body_base64"])


def document_headers(doc: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """The headers of a recorded response document, as (name, value) pairs."""
    return [(str(name), str(value)) for name, value in doc.get("headers", [])]
