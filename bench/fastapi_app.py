"""A FastAPI JSON endpoint, for bench/asgi_bench.py: a pydantic model in
(the request body, validated) and one out (serialised), as a typical API
route does."""

from fastapi import FastAPI
from pydantic import BaseModel


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


class Priced(BaseModel):
    name: str
    price: float
    tax: float
    tags: list[str]


app = FastAPI()


@app.post("/items")
async def price(item: Item) -> Priced:
    return Priced(name=item.name, price=item.price, tax=round(item.price * 0.2, 2), tags=item.tags)


BODY = b'{"name": "widget", "price": 12.5, "tags": ["a", "b"]}'
