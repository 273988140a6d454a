"""The smallest WSGI hello world, and a file download (the file named by
$BENCH_WSGI_FILE, through wsgi.file_wrapper), for bench/wsgi_bench.py."""

import os

HELLO = [b"Hello, world!"]
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "13")]


def app(environ, start_response):
    if environ["PATH_INFO"] == "/file":
        path = os.environ["BENCH_WSGI_FILE"]
        f = open(path, "rb")
        start_response(
            "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(os.path.getsize(path)))]
        )
        return environ["wsgi.file_wrapper"](f, 65536)
    start_response("200 OK", HEADERS)
    return HELLO
