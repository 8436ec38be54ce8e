from __future__ import annotations

from django.urls import path

from tests.frameworks.django_project import views

urlpatterns = [
    path("", views.index),
    path("json/", views.json_view),
    path("items/<int:item_id>/", views.item),
    path("echo/", views.echo),
    path("guarded/", views.guarded),
    path("stream/", views.stream),
    path("worker/", views.worker),
]
