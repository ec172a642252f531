"""TLS contexts: listeners (server side, optional client certificates and an SNI map) and
pools (client side, towards backends), with the settings both share.

Every context is made here, so the security settings are in one place (docs/security.md):
TLS 1.2 minimum, AEAD ciphers with forward secrecy for TLS 1.2 (TLS 1.3 suites are all AEAD),
no compression, no renegotiation.
"""

from __future__ import annotations

import hashlib
import ssl


from .config import TlsConfig, UpstreamTlsConfig

# TLS 1.2 suites: ECDHE/DHE key exchange (forward secrecy) with AES-GCM or ChaCha20-Poly1305
# only; no CBC, no RSA key exchange, no SHA-1 (Mozilla's "intermediate" profile).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"

# Headers that carry a player's verified client certificate to the backend. The balancer
# always removes whatever a player sends under these names (headers.OWN_REQUEST_HEADERS).
SUBJECT_HEADER = b"x-client-cert-subject"
FINGERPRINT_HEADER = b"x-client-cert-fingerprint"


class DirectSSLObject(ssl.SSLObject):
    """An SSLObject whose `read`, `write` and `pending` are the TLS connection's own (C)
    methods. ssl.SSLObject's are Python methods that only forward to them, and the event loop's
    TLS layer calls them on every request, a Python frame each (docs/decisions.md, "TLS per
    request against HAProxy's, counted")."""

    @classmethod
    def _create(cls, *args: object, **kwargs: object) -> "DirectSSLObject":  # type: ignore[override]
        self = super()._create(*args, **kwargs)  # type: ignore[misc]
        connection = getattr(self, "_sslobj", None)
        if connection is not None:  # instance attributes shadow the forwarding methods
            self.read = connection.read
            self.write = connection.write
            self.pending = connection.pending
        return self


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.sslobject_class = DirectSSLObject
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # CRIME; and a renegotiation is a handshake the peer can start at will (CPU, and the
    # identity of the connection changing under an exchange).
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    return context


# -- listeners ---------------------------------------------------------------------------------


def _server_context(certificate: str, key: str, tls: TlsConfig, http2: bool) -> ssl.SSLContext:
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    if http2:
        context.set_alpn_protocols(["h2", "http/1.1"])  # the server's order wins: h2 when offered
    context.load_cert_chain(certificate, key, password=lambda: b"")
    if tls.client_certificate is not None:
        # Set on every context of the listener: a context the SNI callback switches to
        # supplies the CA store the player's certificate is verified against.
        context.load_verify_locations(cafile=tls.client_ca)
        context.verify_mode = (ssl.CERT_REQUIRED if tls.client_certificate == "required"
                               else ssl.CERT_OPTIONAL)
    return context


def server_context(tls: TlsConfig, http2: bool = False) -> ssl.SSLContext:
    """The listener's context; with `sni`, the server name picks the certificate (exact names
    first, then `*.example.com` wildcards), the default pair serves everything else."""
    default = _server_context(tls.certificate, tls.key, tls, http2)
    if not tls.sni:
        return default
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for name, certificate, key in tls.sni:
        context = _server_context(certificate, key, tls, http2)
        if name.startswith("*."):
            wildcard[name[1:].lower()] = context
        else:
            exact[name.lower()] = context

    def pick(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if server_name is None:
            return
        name = server_name.lower()
        context = exact.get(name)
        if context is None:
            dot = name.find(".")
            context = wildcard.get(name[dot:]) if dot > 0 else None
        if context is not None:
            sock.context = context

    default.sni_callback = pick  # type: ignore[assignment]
    return default


class ClientCertificate:
    """A player's verified certificate, as backends and routes see it."""

    __slots__ = ("subject", "fingerprint", "headers")

    def __init__(self, der: bytes) -> None:
        from cryptography import x509  # here: ~8 MiB, only for listeners verifying players

        self.fingerprint = hashlib.sha256(der).hexdigest()
        self.subject = _printable(x509.load_der_x509_certificate(der).subject.rfc4514_string())
        # Ready to join into the request head sent upstream (exchange._build_upstream_head).
        self.headers = b"".join((
            b"\r\n", SUBJECT_HEADER, b": ", self.subject.encode(),
            b"\r\n", FINGERPRINT_HEADER, b": ", self.fingerprint.encode(),
        ))


_IDENTITIES: dict[bytes, ClientCertificate] = {}
_IDENTITIES_MAX = 4096


def client_certificate(transport: object) -> ClientCertificate | None:
    """The verified certificate the player presented on `transport`, if any. The handshake
    already verified it (CERT_REQUIRED / CERT_OPTIONAL fail a bad one): this only reads it.
    Parsed once per distinct certificate: game providers reconnect with the same one."""
    ssl_object = transport.get_extra_info("ssl_object")  # type: ignore[attr-defined]
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    identity = _IDENTITIES.get(der)
    if identity is None:
        identity = ClientCertificate(der)
        if len(_IDENTITIES) >= _IDENTITIES_MAX:
            _IDENTITIES.clear()
        _IDENTITIES[der] = identity
    return identity


def _printable(text: str) -> str:
    """A header value never carries control characters or non-ASCII: RFC 4514's \\XX escape
    for each such UTF-8 byte (a CA-signed subject is still chosen by whoever applied)."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for char in text:
        if char.isascii() and char.isprintable():
            out.append(char)
        else:
            out.extend(f"\\{byte:02X}" for byte in char.encode())
    return "".join(out)


# -- pools -------------------------------------------------------------------------------------


class BackendTls:
    """TLS towards one pool's backends, for one config generation (a reload makes a new one
    with every file read again).

    Sessions are resumed per backend address: the wrapper handed to create_connection offers
    the session of the backend's previous connection when the event loop's TLS layer creates
    the new one (asyncio and uvloop both call `wrap_bio` with no session argument of their
    own). A session is only offered to the context that made it, hence one store per
    generation."""

    __slots__ = ("config", "context", "server_name", "_last")

    def __init__(self, config: UpstreamTlsConfig) -> None:
        self.config = config
        context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        if config.verify:
            if config.ca is not None:
                context.load_verify_locations(cafile=config.ca)
            else:
                context.load_default_certs()
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if config.certificate is not None and config.key is not None:
            context.load_cert_chain(config.certificate, config.key, password=lambda: b"")
        self.context = context
        self.server_name = config.server_name
        # (host, port) -> the SSLObject of that backend's latest connection
        self._last: dict[tuple[str, int], ssl.SSLObject] = {}

    def for_backend(self, host: str, port: int) -> _Resuming:
        return _Resuming(self, (host, port))

    def server_hostname(self, host: str) -> str:
        """SNI and the name verified: `server_name`, else the backend's own host."""
        return self.server_name or host


_SESSIONS_MAX = 4096  # backends per pool whose latest session is kept


class _Resuming:
    """Stands in for the SSLContext of one new backend connection (see BackendTls)."""

    __slots__ = ("_tls", "_key")

    def __init__(self, tls: BackendTls, key: tuple[str, int]) -> None:
        self._tls = tls
        self._key = key

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        tls = self._tls
        if session is None:
            previous = tls._last.get(self._key)
            # TLS 1.3 tickets arrive after the handshake: read from the previous connection
            # now, not when it was made.
            session = previous.session if previous is not None else None
        sslobj = tls.context.wrap_bio(incoming, outgoing, server_side=server_side,
                                      server_hostname=server_hostname, session=session)
        last = tls._last
        if len(last) >= _SESSIONS_MAX and self._key not in last:
            last.clear()  # backends that came and went (Consul): start over
        last[self._key] = sslobj
        return sslobj

    def __getattr__(self, name: str) -> object:
        return getattr(self._tls.context, name)
