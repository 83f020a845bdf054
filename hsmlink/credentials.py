"""The HSM link's credentials: a small private CA, hsm_stub's server certificate, cardsvc's
client certificate, and the TLS contexts of both ends (mutual TLS, TLS 1.3 only).

``make_credentials(out)`` writes, in ``out`` (mode 0700)::

    ca.pem, ca.key          the link's private CA (its key signs the two certificates below)
    hsm.pem, hsm.key        hsm_stub's certificate: SAN = the given hosts (IP or DNS names),
                            extended key usage serverAuth
    client.pem, client.key  cardsvc's certificate (CN "cardsvc"), extended key usage clientAuth

Keys are EC P-256, PKCS#8 PEM, written with mode 0600 and never overwritten: a file that
exists is kept, so running the command again changes nothing (delete a pair to renew it).
One exception, asked for with ``renew_misnamed=True`` (the demo, and ``make-credentials``
given ``--host``): a server certificate that does not name every host asked for, or a
certificate this CA did not issue, is issued again (same key) — otherwise changing the
address cardsvc dials would leave a certificate it must refuse.
The CA key is only needed to issue certificates; in production keep it offline.

``server_context`` is hsm_stub's side: it presents ``hsm.pem`` and requires a client
certificate issued by the client CA. ``client_context`` is cardsvc's side: it presents
``client.pem`` and accepts only a server certificate issued by the CA *for the address it
dials* (hostname/IP check). Neither side has a plain-TCP mode.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
CLIENT_COMMON_NAME = "cardsvc"
_VALIDITY = dt.timedelta(days=825)


class CredentialsError(Exception):
    """A credential file is missing, unreadable or unusable; the message names it."""


@dataclass(frozen=True)
class CredentialPaths:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "hsm.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "hsm.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"


# --- making them -----------------------------------------------------------------------------


def make_credentials(
    out: Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    ca_name: str = "cardsvc HSM link CA",
    renew_misnamed: bool = False,
) -> tuple[CredentialPaths, list[Path]]:
    """Create whatever is missing in ``out``; returns the paths and the files written.

    With ``renew_misnamed`` a server certificate that does not cover ``hosts`` (or that
    another CA issued) is replaced by one that does."""
    paths = CredentialPaths(out)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: list[Path] = []
    ca_key = _key(paths.ca_key, written)
    if not paths.ca_cert.exists():
        name = _name(ca_name)
        builder = _builder(name, name, ca_key.public_key())
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        builder = builder.add_extension(_key_usage(ca=True), True)
        _write(paths.ca_cert, _sign(builder, ca_key), 0o644, written)
    ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    if renew_misnamed and paths.server_cert.exists():
        if not _names_all(paths.server_cert, ca_cert, hosts):
            paths.server_cert.unlink()  # issued again just below, for the same key
    if renew_misnamed and paths.client_cert.exists():
        if not _names_all(paths.client_cert, ca_cert, ()):
            paths.client_cert.unlink()
    _leaf(paths.server_cert, paths.server_key, "hsm_stub", ca_cert, ca_key, written, hosts=hosts)
    _leaf(paths.client_cert, paths.client_key, CLIENT_COMMON_NAME, ca_cert, ca_key, written)
    return paths, written


def _leaf(
    cert_path: Path,
    key_path: Path,
    common_name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    written: list[Path],
    *,
    hosts: Sequence[str] = (),
) -> None:
    key = _key(key_path, written)
    if cert_path.exists():
        return
    builder = _builder(_name(common_name), ca_cert.subject, key.public_key())
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    builder = builder.add_extension(_key_usage(ca=False), True)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if hosts else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(hosts)), False)
    _write(cert_path, _sign(builder, ca_key), 0o644, written)


def _names_all(cert_path: Path, ca_cert: x509.Certificate, hosts: Sequence[str]) -> bool:
    """Whether the certificate was issued by ``ca_cert`` and names every one of ``hosts``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        if not hosts:
            return True
        named = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return all(name in named for name in _sans(hosts))


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _sign(builder: x509.CertificateBuilder, ca_key: ec.EllipticCurvePrivateKey) -> bytes:
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _key(path: Path, written: list[Path]) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CredentialsError(f"{path} is not an EC private key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, 0o600, written)
    return key


def _write(path: Path, data: bytes, mode: int, written: list[Path]) -> None:
    # O_EXCL: never replace a credential another run just made.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    written.append(path)


# --- using them ------------------------------------------------------------------------------


def server_context(cert_file: Path, key_file: Path, client_ca_file: Path) -> ssl.SSLContext:
    """hsm_stub's TLS: TLS 1.3 only, a client certificate from ``client_ca_file`` required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    _load(context, cert_file, key_file, client_ca_file)
    return context


def client_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """cardsvc's TLS: TLS 1.3 only, the server certificate checked against ``ca_file`` and
    the dialled host (IP or name), our client certificate presented."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    _load(context, cert_file, key_file, ca_file)
    return context


def _load(context: ssl.SSLContext, cert_file: Path, key_file: Path, ca_file: Path) -> None:
    for label, path in (("certificate", cert_file), ("key", key_file), ("CA", ca_file)):
        if not path.is_file():
            raise CredentialsError(f"HSM link {label} file {path} does not exist")
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise CredentialsError(
            f"HSM link certificate {cert_file} / key {key_file} unusable: {exc}"
        ) from None
    try:
        context.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise CredentialsError(f"HSM link CA file {ca_file} unusable: {exc}") from None


def peer_subject(peercert: object) -> str:
    """``CN=…`` of a peer certificate as ``ssl`` reports it (``getpeercert()``)."""
    if not isinstance(peercert, dict):
        return "(none)"
    names = [
        f"CN={value}"
        for rdn in peercert.get("subject", ())
        for name, value in rdn
        if name == "commonName"
    ]
    return ",".join(names) or "(none)"
