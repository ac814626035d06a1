"""URLs of the example shop."""

from django.urls import path
from payments import views

urlpatterns = [
    path("payments", views.payments, name="payments"),
    path("payments/<int:pk>", views.payment_detail, name="payment-detail"),
]
