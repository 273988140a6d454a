"""uringserve.server: what every protocol's server shares. Listeners (TCP,
Unix-domain, inherited sockets), the connection registry with one deadline
timer per connection, and the lifecycle: start(), serve_forever(),
shutdown(timeout) draining through each connection's shutdown() hook,
run() with SIGTERM/SIGINT. A new protocol is a protocol class (a
`Connection` subclass) and, if it has work in flight, its shutdown()."""

from .activation import activated
from .connection import KIND_IDLE, KIND_NONE, KIND_USER, Connection, Connections
from .lifecycle import LOOPS, Server, new_loop, run_command
from .listeners import TCP, Inherited, Listener, Unix

__all__ = [
    "Server",
    "Connection",
    "Connections",
    "Listener",
    "TCP",
    "Unix",
    "Inherited",
    "activated",
    "new_loop",
    "run_command",
    "LOOPS",
    "KIND_NONE",
    "KIND_IDLE",
    "KIND_USER",
]
