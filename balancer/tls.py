"""TLS termination: server contexts for listeners, TLS 1.2 and up, with an optional SNI map."""

from __future__ import annotations

import ssl

from .config import TlsConfig


def _context(certificate: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION  # CRIME
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(certificate, key)
    return context


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The listener's context; with `sni`, the server name picks the certificate (exact names
    first, then `*.example.com` wildcards), the default pair serves everything else."""
    default = _context(tls.certificate, tls.key)
    if not tls.sni:
        return default
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for name, certificate, key in tls.sni:
        context = _context(certificate, key)
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
