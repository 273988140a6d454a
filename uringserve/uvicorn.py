"""uvicorn drop-in: `uvicorn app:app --loop uringserve.uvicorn:loop_factory`.

uvicorn (0.36+) imports a custom `--loop` string and calls it to make the
event loop; its own protocols (httptools or h11, websockets) then run over
uringserve's io_uring transports unchanged.
"""

from __future__ import annotations

from .loop import UringEventLoop


def loop_factory() -> UringEventLoop:
    return UringEventLoop()
