"""The payments API: ``POST /payments`` charges a card at most once per Idempotency-Key."""

from __future__ import annotations

import functools
import json
import secrets
import time
from typing import Any, Callable

from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

import sentinel
from sentinel.contrib.django import idempotent_view

from .models import Payment


def api_login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """401 (not a redirect to a login page) for anonymous API clients."""

    @functools.wraps(view)
    def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
        if not request.user.is_authenticated:
            response = JsonResponse({"error": "unauthorized", "detail": "log in first"}, status=401)
            response["WWW-Authenticate"] = 'Basic realm="shop"'
            return response
        return view(request, *args, **kwargs)

    return wrapper


def charge_card(amount: int, currency: str, customer: str, idempotency_key: str) -> str:
    """The simulated card provider: takes a while, returns a charge id."""
    time.sleep(settings.PAYMENT_PROVIDER_LATENCY_MS / 1000)
    return "ch_" + secrets.token_hex(8)


def _bad_request(detail: str) -> JsonResponse:
    return JsonResponse({"error": "invalid_request", "detail": detail}, status=400)


@require_http_methods(["GET", "POST"])
@api_login_required
@idempotent_view(required=True)
def payments(request: Any) -> Any:
    """GET: the user's payments. POST {"amount": 9900, "currency": "eur", "customer": "cus_1"}: charge once."""
    if request.method == "GET":
        return JsonResponse({"payments": [p.as_dict() for p in request.user.payments.order_by("pk")]})
    try:
        data = json.loads(request.body)
    except ValueError:
        return _bad_request("the body must be JSON")
    amount, currency, customer = data.get("amount"), data.get("currency"), data.get("customer")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return _bad_request("amount must be a positive integer (minor units)")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        return _bad_request("currency must be a three-letter code")
    if not isinstance(customer, str) or not customer:
        return _bad_request("customer is required")
    ctx = sentinel.current_execution()  # the key and fence this view runs under
    assert ctx is not None
    charge_id = charge_card(amount, currency.lower(), customer, idempotency_key=ctx.key)
    payment = Payment.objects.create(
        user=request.user, amount=amount, currency=currency.lower(), customer=customer,
        charge_id=charge_id, idempotency_key=ctx.key, fence=ctx.fence,
    )
    return JsonResponse(payment.as_dict(), status=201,
                        headers={"Location": reverse("payment-detail", args=[payment.pk])})


@require_GET
@api_login_required
def payment_detail(request: Any, pk: int) -> Any:
    return JsonResponse(get_object_or_404(Payment, pk=pk, user=request.user).as_dict())
