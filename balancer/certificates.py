"""Every certificate, key and CA file of a config, read afresh: at start and at each reload.

`load_certificates(config)` builds all listener and backend TLS contexts before anything is
swapped, so a renewal that left a broken file refuses the reload (the old certificates stay in
force) instead of taking a listener down. It also records when each file's certificates
expire, for `balancer_certificate_expiry_timestamp_seconds`.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field


from .config import Config, TlsConfig, UpstreamTlsConfig
from .tls import BackendTls, server_context

log = logging.getLogger("balancer.tls")


class CertificateError(OSError):
    """Files that could not be loaded; `errors` holds one line per file, with its key path.
    An OSError: at start-up it is reported like any other file the balancer cannot use."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Expiry:
    """The earliest notAfter among the certificates of one file."""

    owner: str  # "listener" or "pool"
    owner_name: str
    name: str  # certificate, sni:<server name>, client_ca, ca
    path: str
    not_after: float  # Unix time


@dataclass(slots=True)
class Certificates:
    listeners: dict[str, ssl.SSLContext] = field(default_factory=dict)
    pools: dict[str, BackendTls] = field(default_factory=dict)
    expiries: list[Expiry] = field(default_factory=list)


def load_certificates(config: Config, source: str | None = None) -> Certificates:
    """Read every TLS file of `config`; raise CertificateError naming each one that fails."""
    source = source or config.source
    loaded = Certificates()
    errors: list[str] = []
    for index, listener in enumerate(config.listeners):
        if listener.tls is None:
            continue
        path = f"listeners.{index}.tls"
        try:
            loaded.listeners[listener.name] = server_context(listener.tls, listener.http2)
            loaded.expiries.extend(_listener_expiries(listener.name, listener.tls))
        except (OSError, ssl.SSLError, ValueError) as exc:
            errors.append(f"{source}: {path}: cannot load: {_reason(exc)}")
    for name, pool in config.pools.items():
        if pool.tls is None:
            continue
        path = f"pools.{name}.tls"
        if not pool.tls.verify:
            log.warning("pool %s: tls.verify is false: backend certificates are NOT verified "
                        "(anyone on the path can impersonate a backend)", name)
        try:
            loaded.pools[name] = BackendTls(pool.tls)
            loaded.expiries.extend(_pool_expiries(name, pool.tls))
        except (OSError, ssl.SSLError, ValueError) as exc:
            errors.append(f"{source}: {path}: cannot load: {_reason(exc)}")
    if errors:
        raise CertificateError(errors)
    return loaded


def _listener_expiries(listener: str, tls: TlsConfig) -> list[Expiry]:
    files = [("certificate", tls.certificate)]
    files += [(f"sni:{server_name}", certificate) for server_name, certificate, _ in tls.sni]
    if tls.client_ca is not None:
        files.append(("client_ca", tls.client_ca))
    return [Expiry("listener", listener, name, path, not_after(path)) for name, path in files]


def _pool_expiries(pool: str, tls: UpstreamTlsConfig) -> list[Expiry]:
    files = [("certificate", tls.certificate), ("ca", tls.ca)]
    return [Expiry("pool", pool, name, path, not_after(path)) for name, path in files if path]


def not_after(path: str) -> float:
    """When the first certificate in the PEM file at `path` to expire does."""
    # Imported here: cryptography costs ~8 MiB of memory, needed only where TLS is configured.
    from cryptography import x509

    with open(path, "rb") as file:
        certificates = x509.load_pem_x509_certificates(file.read())
    return min(c.not_valid_after_utc.timestamp() for c in certificates)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__
