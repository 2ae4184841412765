"""The serve process's listening socket and TLS context, made before the model loads.

`serve` binds its address and loads its certificate first, so a taken port or a missing key
fails in a moment with one line, not after the model has loaded for seconds or minutes. The
socket is bound but does not listen yet: until the server is ready (warmed up), a client's
connection is refused, as before; StreamServer.start listens on it. Torch-free.
"""

from __future__ import annotations

import os
import socket
import ssl

from ichigo_stream.errors import IchigoStreamError

from .config import ServerConfig


def bind_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port (the first address host resolves to), not listening.

    Port 0 picks a free port now; the one picked is the one served. reuse_port: SO_REUSEPORT,
    so that the ingest processes of multi-process mode each bind and listen on the same port
    (server.supervisor); the kernel spreads new connections over them.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise IchigoStreamError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As asyncio's create_server: a restarted server rebinds a port in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise IchigoStreamError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context from --certfile/--keyfile (None without); one-line errors."""
    if not config.certfile:
        return None
    for flag, path in (("--certfile", config.certfile), ("--keyfile", config.keyfile)):
        if path and not os.path.isfile(path):
            raise IchigoStreamError(f"{flag} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as e:
        raise IchigoStreamError(
            f"TLS: cannot load {config.certfile} / {config.keyfile}: {e.strerror or e}"
        ) from None
    return context


class Listener:
    """What serve prepares before loading: its bound socket and its TLS context.

    shared: the multi-process server's socket (SO_REUSEPORT), bound first without the
    option, so that a port another server holds (one that set SO_REUSEPORT too, as another
    multi-process server) is refused rather than shared; port: the port to bind instead of
    config.port, without that check (an ingest process binds the one its supervisor holds).
    """

    def __init__(self, config: ServerConfig, *, shared: bool = False, port: int | None = None):
        self.tls = tls_context(config)
        if port is None:
            port = config.port
            if shared:
                probe = bind_listener(config.host, port)
                port = probe.getsockname()[1]
                probe.close()
        self.sock = bind_listener(config.host, port, reuse_port=shared)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()
