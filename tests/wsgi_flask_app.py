"""A Flask app for tests/test_wsgi_apps.py: routing, JSON, a streamed
response (stream_with_context) and send_file of the file named by
$WSGI_TEST_FILE (through wsgi.file_wrapper)."""

from __future__ import annotations

import os

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "hello from flask"


@app.get("/user/<name>")
def user(name: str) -> str:
    return f"user {name}"


@app.post("/json")
def echo_json() -> Response:
    data = request.get_json()
    return jsonify(got=data, n=len(data["items"]))


@app.get("/stream")
def stream() -> Response:
    count = int(request.args.get("n", "3"))

    def parts():
        for i in range(count):  # request is still there: stream_with_context keeps its context
            yield f"{request.path}:{i};"

    return Response(stream_with_context(parts()), mimetype="text/plain")


@app.get("/file")
def file() -> Response:
    return send_file(os.environ["WSGI_TEST_FILE"], mimetype="application/octet-stream")
