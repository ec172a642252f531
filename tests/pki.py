"""Certificates for TLS tests, made with trustme and written where a config can name them."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


class Pki:
    """One CA; `pair(name)` issues a certificate for `name` and writes (chain, key) files."""

    def __init__(self, folder: Path, ca: trustme.CA | None = None) -> None:
        self.folder = folder
        self.ca = ca or trustme.CA()
        self.ca_file = folder / f"ca-{id(self)}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def pair(self, *names: str, common_name: str | None = None, file: str | None = None,
             **options: object) -> tuple[Path, Path]:
        cert = self.ca.issue_cert(*names, common_name=common_name, **options)
        stem = self.folder / (file or f"{names[0]}-{id(cert)}")
        chain, key = stem.with_suffix(".pem"), stem.with_suffix(".key")
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        return chain, key

    def server_context(self, *names: str, client_ca: "Pki | None" = None) -> ssl.SSLContext:
        """A context for a backend serving TLS as `names` (and asking for a client certificate
        from `client_ca` when given)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert(*names).configure_cert(context)
        if client_ca is not None:
            client_ca.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        """A player's context trusting this CA, presenting `cert` if given."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return context
