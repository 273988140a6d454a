"""uringserve.http: an HTTP/1.1 server on httptools with a native handler
API, ASGI 3 and WSGI, zero-copy static files, limits and timeouts."""

from .config import HTTPConfig
from .messages import ClientDisconnected, FileResponse, Headers, Request, Response, StreamingResponse
from .parser import HTTPError, RequestParser
from .server import HTTPServer, run
from .static import StaticFiles

__all__ = [
    "HTTPConfig",
    "HTTPServer",
    "run",
    "Request",
    "Response",
    "StreamingResponse",
    "FileResponse",
    "Headers",
    "StaticFiles",
    "HTTPError",
    "RequestParser",
    "ClientDisconnected",
]
