"""Every handler kind the server runs (tests/http_kinds.py: the `kind`
fixture and ROUTES) answers the same routes with the same bytes, and an
observer (what --access-log and --metrics install) changes none of them."""

from __future__ import annotations

from typing import Any

from http_kinds import ROUTES, kind, serve  # noqa: F401 (kind: the fixture)


def test_every_kind_answers_the_same_bytes(h, kind) -> None:  # noqa: F811
    serve(h, kind)


def test_every_kind_answers_the_same_bytes_observed(h, kind) -> None:  # noqa: F811
    """An observer (what --access-log and --metrics install) changes no byte."""
    seen: list[tuple[Any, ...]] = []
    serve(h, kind, observer=lambda *args: seen.append(args[1:5]))
    assert seen == [(r.method, r.path.encode(), "1.1", r.status) for r in ROUTES]
