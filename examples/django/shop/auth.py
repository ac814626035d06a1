"""HTTP Basic authentication for the API (``curl -u alice:secret ...``)."""

from __future__ import annotations

import base64
from typing import Any, Callable

from django.contrib.auth import authenticate
from django.http import JsonResponse


class BasicAuthMiddleware:
    """Authenticates ``Authorization: Basic ...`` requests; 401 on bad credentials.

    Such requests carry no session cookie, so CSRF protection does not apply to
    them (as in Django REST framework); cookie-authenticated requests keep it.
    """

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                username, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return unauthorized()
            user = authenticate(request, username=username, password=password)
            if user is None:
                return unauthorized()
            request.user = user
            request._dont_enforce_csrf_checks = True
        return self.get_response(request)


def unauthorized() -> Any:
    response = JsonResponse({"error": "unauthorized", "detail": "use HTTP Basic authentication"}, status=401)
    response["WWW-Authenticate"] = 'Basic realm="shop"'
    return response
