"""HTTPS for ``agora-export serve --https``: a local certificate authority and the server's certificate.

A phone opening ``http://192.168.x.y:8000`` gets no secure context (no cross-origin isolation, so
onnxruntime-web runs one thread; no camera, no service worker). Over HTTPS it does, once the phone
accepts the certificate. Made on first use and kept in the user's config folder
(:func:`config_dir`: ``$AGORA_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/agora``, else
``~/.config/agora``; the folder is created 0700):

* ``tls/agora-local-ca.pem`` (+ ``-key.pem``, 0600): a certificate authority that can sign only
  for ``localhost``, ``*.local`` and private, loopback and link-local IP addresses (X.509 name
  constraints), so trusting it on a phone cannot expose the phone's other HTTPS traffic. Its SHA-256
  fingerprint is what :func:`webviewer.server.banner` prints next to the QR code; it stays the same
  across runs, so a phone trusts it once.
* ``tls/agora-server.pem`` (+ ``-key.pem``): the certificate the server presents, signed by that
  authority for the names and addresses it announces; made again when those change or it nears its
  end (397 days, within Apple's limit for TLS server certificates).

``--cert/--key`` use the user's own files instead (:func:`user_certificate`).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from agora_core.types.errors import AgoraError
from agora_core.types.io import atomic_write

CA_NAME = "agora-local-ca"
SERVER_NAME = "agora-server"
CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_BEFORE_DAYS = 30
# the only names the local authority may sign for (RFC 5280 name constraints)
PERMITTED_NETWORKS = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                      "100.64.0.0/10", "::1/128", "fc00::/7", "fe80::/10")
PERMITTED_DNS = ("localhost", "local")


@dataclass(frozen=True)
class CertPair:
    """A certificate (PEM, chain first the leaf) and its private key, as files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TLSSetup:
    """What the server serves with and what the banner tells the user."""

    pair: CertPair
    fingerprint: str  # SHA-256 of the certificate to check/trust on the phone, "AB:CD:..."
    trust_cert: Path | None  # the authority's certificate to install on a phone (None: the user's own)
    created: bool = False  # made in this run (first use, or renewed)
    left_out: tuple[str, ...] = ()  # names the local authority may not sign for (not covered)


def config_dir() -> Path:
    """agora's folder in the user's config folder: ``$AGORA_CONFIG_DIR``, ``$XDG_CONFIG_HOME/agora``
    or ``~/.config/agora``."""
    override = os.environ.get("AGORA_CONFIG_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "agora"


def fingerprint_sha256(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM certificate's DER bytes, as browsers show it (``AB:CD:...``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def is_permitted(name: str) -> bool:
    """Whether the local authority may sign for ``name`` (a host name or an IP address)."""
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        name = name.lower().rstrip(".")
        return name == "localhost" or name.endswith(".localhost") or name.endswith(".local")
    return any(addr in ipaddress.ip_network(net) for net in PERMITTED_NETWORKS)


def _private_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)  # keys live here: nobody else may list or read it
    return folder


def _write_pem(path: Path, data: bytes, private: bool) -> None:
    with atomic_write(path) as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_ca(folder: Path) -> CertPair:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agora local CA (agora-export serve --https)"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agora")])
    now = dt.datetime.now(dt.timezone.utc)
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName(d) for d in PERMITTED_DNS]
        + [x509.IPAddress(ipaddress.ip_network(n)) for n in PERMITTED_NETWORKS],
        excluded_subtrees=None)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(constraints, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    pair = CertPair(folder / f"{CA_NAME}.pem", folder / f"{CA_NAME}-key.pem")
    _write_pem(pair.key, _key_pem(key), private=True)
    _write_pem(pair.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return pair


def _san(names: list[str]):
    from cryptography import x509

    entries = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n.lower().rstrip(".")))
    return x509.SubjectAlternativeName(entries)


def _make_server_cert(folder: Path, ca: CertPair, names: list[str]) -> CertPair:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    key = _new_key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_san(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pair = CertPair(folder / f"{SERVER_NAME}.pem", folder / f"{SERVER_NAME}-key.pem")
    _write_pem(pair.key, _key_pem(key), private=True)
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.cert.read_bytes()
    _write_pem(pair.cert, chain, private=False)
    return pair


def _server_cert_fits(pair: CertPair, ca: CertPair, names: list[str]) -> bool:
    """Whether the kept server certificate is the authority's, covers ``names`` and is not near its end."""
    from cryptography import x509

    if not (pair.cert.is_file() and pair.key.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n.lower().rstrip(".") for n in names}
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=RENEW_BEFORE_DAYS)
    return cert.issuer == ca_cert.subject and wanted <= have and cert.not_valid_after_utc > soon


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def local_certificate(names: list[str], folder: Path | None = None) -> TLSSetup:
    """The kept local authority and a server certificate for ``names`` (made when missing, renewed
    when they no longer fit). Names the authority may not sign for are left out (see
    :func:`is_permitted`); AgoraError if none is left."""
    folder = _private_dir((folder or config_dir()) / "tls")
    signable = [n for n in dict.fromkeys(names) if is_permitted(n)]
    if not signable:
        raise AgoraError(f"the local certificate authority cannot sign for {', '.join(names)}: "
                         "use --cert/--key with a certificate of your own")
    created = False
    ca = CertPair(folder / f"{CA_NAME}.pem", folder / f"{CA_NAME}-key.pem")
    try:
        if not (ca.cert.is_file() and ca.key.is_file()):
            ca, created = _make_ca(folder), True
        server = CertPair(folder / f"{SERVER_NAME}.pem", folder / f"{SERVER_NAME}-key.pem")
        if created or not _server_cert_fits(server, ca, signable):
            server, created = _make_server_cert(folder, ca, signable), True
    except (OSError, ValueError) as exc:
        raise AgoraError(f"cannot make the local certificate in {folder}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    left_out = tuple(n for n in dict.fromkeys(names) if not is_permitted(n))
    return TLSSetup(server, fingerprint_sha256(ca.cert.read_bytes()), ca.cert, created, left_out)


def user_certificate(cert: Path, key: Path) -> TLSSetup:
    """The user's own certificate (PEM, chain after the leaf) and key, checked by loading them."""
    for what, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise AgoraError(f"{what} not found: {path}")
    pair = CertPair(Path(cert), Path(key))
    server_context(pair)
    first = pair.cert.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    return TLSSetup(pair, fingerprint_sha256(first), None)


def server_context(pair: CertPair) -> ssl.SSLContext:
    """A TLS 1.2+ server context for ``pair``; AgoraError (one line) if the files do not fit."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(pair.cert), str(pair.key))
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise AgoraError(f"cannot use the certificate {pair.cert} with the key {pair.key}: {reason}") from None
    return context


__all__ = ["CertPair", "TLSSetup", "config_dir", "fingerprint_sha256", "is_permitted", "local_certificate",
           "user_certificate", "server_context"]
