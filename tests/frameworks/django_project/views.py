"""Function views for the test project."""

from __future__ import annotations

import os
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt


def index(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("hello, django", content_type="text/plain")
    response["X-Custom"] = "django-value"
    return response


def json_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"framework": "django", "q": request.GET.get("q"), "path": request.path})


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse({"item_id": item_id})


@csrf_exempt
def echo(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    return HttpResponse(
        request.body,
        content_type=request.content_type or "application/octet-stream",
        headers={"X-Length": str(len(request.body))},
    )


def guarded(request: HttpRequest) -> HttpResponse:
    """Not csrf_exempt: a POST without a token gets Django's 403."""
    return HttpResponse("passed")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    count = int(request.GET.get("n", "5"))

    def rows() -> Iterator[str]:
        for i in range(count):
            yield f"row-{i};"

    return StreamingHttpResponse(rows(), content_type="text/plain")


def worker(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"worker_id": request.META.get("squall.worker_id"), "pid": os.getpid()})
