# -*- test-case-name: tests.auth.test_certs,tests.test_reload -*-
"""
The server TLS settings of a listener, swappable on a reload: new connections
get the current settings, and open connections whose device certificate the new
settings refuse are closed.
"""

from __future__ import annotations

import weakref
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from gateway.auth.certs import peer_address

__all__ = ["ReloadableServerTLS"]

_log = Logger()


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    The server TLS settings of a listener, replaceable while it runs.

    Each new connection is made with the current settings; L{swap} replaces them
    for connections accepted afterwards, and closes the open connections whose
    device certificate the new settings refuse (revoked by the new CRL, no
    longer trusted by the new client CA, no client certificates taken any
    more): a revoked device must not keep publishing on a keep-alive
    connection. Other open connections are left alone.
    """

    def __init__(self, options: IOpenSSLServerConnectionCreator) -> None:
        """
        @param options: the settings to start with, usually from
            L{gateway.auth.certs.load_server_options}.
        """
        self._options = options
        self._retired_refusals = 0
        # Each open connection (its TLS protocol) and the settings it was made
        # with; entries go when the protocol does.
        self._open: weakref.WeakKeyDictionary[Any, IOpenSSLServerConnectionCreator]
        self._open = weakref.WeakKeyDictionary()

    @property
    def options(self) -> IOpenSSLServerConnectionCreator:
        """
        The settings new connections are made with.
        """
        return self._options

    @property
    def refused_certificates(self) -> int:
        """
        How many client certificates failed verification, over all settings
        this has held.
        """
        return self._retired_refusals + _refusals(self._options)

    def swap(self, options: IOpenSSLServerConnectionCreator) -> int:
        """
        Make new connections with C{options} from now on, and close the open
        connections whose client certificate C{options} would refuse (see
        L{gateway.auth.certs.ServerTLSOptions.refusal}). A connection still in
        its handshake that was asked for a certificate is closed too: it was
        verified (or is being verified) against the old settings, and the
        client can connect again at once. Each closed connection is logged.

        @return: how many connections were closed.
        """
        self._retired_refusals += _refusals(self._options)
        self._options = options
        closed = 0
        for protocol, made_with in list(self._open.items()):
            connection = protocol.getHandle() if protocol.connected else None
            if connection is None or made_with is options:
                continue
            if getattr(made_with, "client_cert", "none") == "none":
                continue  # no device certificate on it
            reason: str | None
            if connection.get_peer_finished() is None:
                reason = "its handshake was not complete when the settings changed"
            else:
                reason = _refusal(options, connection)
            if reason is None:
                continue
            _log.info(
                "Closed the TLS connection of {peer} after a reload: {reason}",
                peer=peer_address(connection),
                reason=reason,
            )
            protocol.abortConnection()
            closed += 1
        return closed

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A new server-side TLS connection with the current settings.
        """
        options = self._options
        connection = options.serverConnectionForTLS(tlsProtocol)
        self._open[tlsProtocol] = options
        return connection


def _refusal(options: object, connection: SSL.Connection) -> str | None:
    """
    Why C{options} refuse the client certificate of C{connection}, or C{None}
    (also for settings that cannot say, and for a connection without one).
    """
    certificate = connection.get_peer_certificate()
    refusal = getattr(options, "refusal", None)
    if certificate is None or refusal is None:
        return None
    reason: str | None = refusal(certificate, connection.get_peer_cert_chain() or [])
    return reason


def _refusals(options: object) -> int:
    count = getattr(options, "refused_certificates", 0)
    return count if isinstance(count, int) else 0
