from django.urls import path

from . import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics_view, name="metrics"),
    path("monitoring/", views.dashboard, name="monitoring-dashboard"),
    path(
        "monitoring/api/breakers/<str:name>/reset",
        views.reset_breaker,
        name="monitoring-breaker-reset",
    ),
    path("monitoring/api/<str:section>", views.api, name="monitoring-api"),
    path("monitoring/api/", views.api, name="monitoring-api-summary"),
]
