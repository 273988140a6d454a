"""RESP2 (the Redis protocol) for servers: a sans-I/O request parser with
Redis's limits and error texts, and reply encoders.

The in-memory server built on them is `uringserve.resp.server` (its
commands and keyspace beside it); it is not imported here, so that the
parser can be used without the serving layer."""

from .parser import MAX_ARGS, MAX_BULK, ProtocolError, RequestParser, split_inline
from .reply import array, bulk, error, integer, simple

__all__ = [
    "RequestParser",
    "ProtocolError",
    "split_inline",
    "MAX_BULK",
    "MAX_ARGS",
    "simple",
    "error",
    "integer",
    "bulk",
    "array",
]
