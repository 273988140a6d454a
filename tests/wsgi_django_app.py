"""A minimal Django project in one module for tests/test_wsgi_apps.py:
settings, URLs and views; `application` is Django's WSGI handler."""

from __future__ import annotations

import os

import django
from django.conf import settings
from django.http import FileResponse, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

settings.configure(
    DEBUG=False,
    SECRET_KEY="test-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    USE_TZ=True,
)
django.setup()


def index(request):
    return HttpResponse(f"hello from django {request.method} {request.get_full_path()}")


@csrf_exempt
def echo(request):
    return JsonResponse({"size": len(request.body), "type": request.content_type})


def stream(request):
    return StreamingHttpResponse((f"part{i};" for i in range(4)), content_type="text/plain")


def download(request):
    # FileResponse hands its file to wsgi.file_wrapper
    return FileResponse(open(os.environ["WSGI_TEST_FILE"], "rb"), as_attachment=True, filename="data.bin")


urlpatterns = [path("", index), path("echo", echo), path("stream", stream), path("file", download)]

from django.core.wsgi import get_wsgi_application  # noqa: E402 (after settings)

application = get_wsgi_application()
