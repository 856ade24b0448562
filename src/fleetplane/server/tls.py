"""Mutual TLS on the one port: ask for (never require) a client certificate, trust every
tenant's root + issuing CA, and hand the peer certificate to the application.

uvicorn does not put the client certificate into the ASGI scope, so :class:`MtlsHttpToolsProtocol`
(a small subclass of its httptools protocol) fills the ASGI TLS extension,
``scope["extensions"]["tls"]["client_cert_chain"]``, from the connection's SSL object; the
application verifies the certificate again itself (``server/site_api.py``). Never a header.

OpenSSL refuses at the handshake a client certificate it cannot verify (an unknown CA,
expired); a verified one may still be revoked or of a deleted site, which the application
answers with 401.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, overload

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class TrustBundle:
    """The CA certificates client certificates are verified against, shared by every live
    context: a CA added later (a new tenant's) is trusted by the next handshake."""

    def __init__(self) -> None:
        self._contexts: list[ssl.SSLContext] = []
        self._added: set[bytes] = set()
        self._lock = threading.Lock()

    def attach(self, context: ssl.SSLContext) -> None:
        with self._lock:
            self._contexts.append(context)
            for pem in self._added:
                context.load_verify_locations(cadata=pem.decode())

    def add(self, pem: bytes) -> None:
        if not pem.strip():
            return
        with self._lock:
            if pem in self._added:
                return
            self._added.add(pem)
            for context in self._contexts:
                context.load_verify_locations(cadata=pem.decode())


TRUST = TrustBundle()


def ssl_context_factory(
    trust: TrustBundle = TRUST,
) -> Callable[[Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    """For uvicorn's ``ssl_context_factory``: the serving certificate from ``ssl_certfile`` /
    ``ssl_keyfile``, plus an optional client certificate verified against ``trust``."""

    def factory(config: Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = default()
        context.verify_mode = ssl.CERT_OPTIONAL
        # No TLS 1.3 session tickets: agents keep one long-lived connection and do not
        # resume, and a ticket per handshake (carrying the client chain) costs CPU and memory.
        context.num_tickets = 0
        trust.attach(context)
        return context

    return factory


class PemChain(Sequence[str]):
    """``client_cert_chain`` of the ASGI TLS extension for a connection's one client
    certificate: a sequence of one PEM string, made when read. A connection keeps the DER
    instead (``der``), half the bytes, and the site API, which wants DER, takes it as it is:
    no DER -> PEM per connection and PEM -> DER per request."""

    __slots__ = ("der",)

    def __init__(self, der: bytes) -> None:
        self.der = der

    def __len__(self) -> int:
        return 1

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return [ssl.DER_cert_to_PEM_cert(self.der)][index]


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests (``appendleft`` to queue, ``pop`` to start the
    oldest) as a list: an empty ``deque`` holds a 64-slot block, about 0.7 KB on every
    connection, and HTTP/1.1 pipelining is rare (no site agent does it)."""

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


def _lean_event(event: asyncio.Event) -> None:
    """Give an ``asyncio.Event`` nobody waits on yet a list for its waiters: it keeps them in a
    ``deque``, about 0.7 KB even when empty, and uvicorn makes two per connection with a
    request waiting (flow control's, the request's). The Event only appends, removes and
    iterates its waiters, which a list does the same."""
    waiters = getattr(event, "_waiters", None)
    if isinstance(waiters, deque) and not waiters:
        setattr(event, "_waiters", [])  # noqa: B010  (a private attribute: mypy does not know it)


class MtlsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the ASGI TLS extension in every request's scope.

    It also keeps less per connection: 10,000 sites each hold one, with a long-poll waiting
    on it, so every 1 KB here is 10 MB of the server's memory. ``bench/fanout.py`` measures
    it ("server memory per connected site")."""

    _tls_extension: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.pipeline = _Pipeline()  # type: ignore[assignment]  # the calls uvicorn makes on it
        _lean_event(self.flow._is_writable_event)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            self._tls_extension = None
            return
        der = ssl_object.getpeercert(binary_form=True)
        # uvloop keeps the decoded client certificate (subject, issuer, SANs as nested tuples,
        # about 1.7 KB) in the transport's "peercert" for the connection's life. Nothing here
        # reads it: the application takes the DER above and verifies it itself.
        decoded = transport.get_extra_info("peercert")
        if isinstance(decoded, dict):
            decoded.clear()
        self._tls_extension = {
            "server_cert": None,
            "client_cert_chain": PemChain(der) if der else [],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
        }

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None:
            _lean_event(self.cycle.message_event)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls_extension is not None:
            extensions: dict[Any, Any] = dict(self.scope.get("extensions") or {})
            extensions["tls"] = self._tls_extension
            self.scope["extensions"] = extensions
