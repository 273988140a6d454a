"""Starlette's StaticFiles over the directory URINGSERVE_STATIC names: the
static-file peer of bench/tls_bench.py (served by uvicorn --ssl-*), as
apps/http.py's /static/ is uringserve's."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

app = Starlette(routes=[Mount("/static", StaticFiles(directory=os.environ["URINGSERVE_STATIC"]))])
