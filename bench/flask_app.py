"""A Flask JSON endpoint, for bench/wsgi_bench.py: the request body parsed
and a computed object serialised, as bench/fastapi_app.py does for ASGI
(without a validation library: Flask has none of its own)."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/items")
def price():
    item = request.get_json()
    return jsonify(name=item["name"], price=item["price"], tax=round(item["price"] * 0.2, 2), tags=item["tags"])


BODY = b'{"name": "widget", "price": 12.5, "tags": ["a", "b"]}'
