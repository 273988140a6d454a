"""uringserve.ws: WebSockets (RFC 6455, RFC 7692 permessage-deflate) on the
server layer. frames/deflate/handshake are the sans-I/O codec; the
connection protocol, ASGI and the native handler API build on them."""
