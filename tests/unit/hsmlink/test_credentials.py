"""The HSM link's credentials: made once, private keys 0600, certificates fit for their end."""

from __future__ import annotations

import ipaddress
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from hsmlink.credentials import (
    CredentialPaths,
    CredentialsError,
    client_context,
    make_credentials,
    peer_subject,
    server_context,
)


def test_made_once_and_kept(tmp_path: Path) -> None:
    paths, written = make_credentials(tmp_path / "tls")
    assert len(written) == 6
    before = {path: path.read_bytes() for path in written}
    again, rewritten = make_credentials(tmp_path / "tls")
    assert rewritten == [] and again == paths
    assert {path: path.read_bytes() for path in before} == before
    for key in (paths.ca_key, paths.server_key, paths.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.directory.stat().st_mode) == 0o700


def test_a_missing_pair_is_made_again_under_the_same_ca(tmp_path: Path) -> None:
    paths, _ = make_credentials(tmp_path)
    ca = paths.ca_cert.read_bytes()
    paths.client_cert.unlink()
    paths.client_key.unlink()
    _, written = make_credentials(tmp_path)
    assert sorted(written) == sorted([paths.client_cert, paths.client_key])
    assert paths.ca_cert.read_bytes() == ca


def test_certificates_fit_their_end(tmp_path: Path) -> None:
    paths, _ = make_credentials(tmp_path, hosts=["127.0.0.1", "hsm_stub"])
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(paths.client_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["hsm_stub"]
    server_usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    client_usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(server_usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(client_usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_contexts_are_mutual_tls_13(tmp_path: Path) -> None:
    paths, _ = make_credentials(tmp_path)
    server = server_context(paths.server_cert, paths.server_key, paths.ca_cert)
    client = client_context(paths.ca_cert, paths.client_cert, paths.client_key)
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname


def test_missing_files_are_named(tmp_path: Path) -> None:
    paths, _ = make_credentials(tmp_path)
    paths.client_key.unlink()
    with pytest.raises(CredentialsError, match=r"client\.key does not exist"):
        client_context(paths.ca_cert, paths.client_cert, paths.client_key)


@pytest.mark.parametrize(
    ("peercert", "subject"),
    [
        ({"subject": ((("commonName", "cardsvc"),),)}, "CN=cardsvc"),
        ({"subject": ((("organizationName", "x"),),)}, "(none)"),
        (None, "(none)"),
    ],
)
def test_peer_subject(peercert: object, subject: str) -> None:
    assert peer_subject(peercert) == subject


def _server_names(paths: CredentialPaths) -> list[str]:
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name) for name in names.get_values_for_type(x509.IPAddress)] + list(
        names.get_values_for_type(x509.DNSName)
    )


def test_a_server_certificate_for_another_host_is_issued_again_when_asked(
    tmp_path: Path,
) -> None:
    paths, _ = make_credentials(tmp_path, hosts=["127.0.0.1", "localhost"])
    key, client = paths.server_key.read_bytes(), paths.client_cert.read_bytes()
    # The demo started again with CARDSVC_HSM_HOST=10.0.0.5: the old certificate cannot serve.
    _, written = make_credentials(
        tmp_path, hosts=["10.0.0.5", "127.0.0.1", "localhost"], renew_misnamed=True
    )
    assert written == [paths.server_cert]
    assert _server_names(paths) == ["10.0.0.5", "127.0.0.1", "localhost"]
    assert paths.server_key.read_bytes() == key and paths.client_cert.read_bytes() == client
    # Covered already: nothing is written.
    _, written = make_credentials(tmp_path, hosts=["10.0.0.5"], renew_misnamed=True)
    assert written == []


def test_a_misnamed_server_certificate_is_kept_unless_asked(tmp_path: Path) -> None:
    paths, _ = make_credentials(tmp_path, hosts=["hsm.example.invalid"])
    _, written = make_credentials(tmp_path)
    assert written == [] and _server_names(paths) == ["hsm.example.invalid"]


def test_certificates_of_another_ca_are_issued_again_when_asked(tmp_path: Path) -> None:
    paths, _ = make_credentials(tmp_path)
    paths.ca_cert.unlink()
    paths.ca_key.unlink()
    _, written = make_credentials(tmp_path, renew_misnamed=True)
    assert {paths.server_cert, paths.client_cert} <= set(written)
    server_context(paths.server_cert, paths.server_key, paths.ca_cert)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    for leaf in (paths.server_cert, paths.client_cert):
        x509.load_pem_x509_certificate(leaf.read_bytes()).verify_directly_issued_by(ca)


def test_make_credentials_command_names_a_new_host(tmp_path: Path) -> None:
    first = subprocess.run(
        [sys.executable, "-m", "hsm_stub", "make-credentials", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "6 new files" in first.stdout
    subprocess.run(
        [
            *(sys.executable, "-m", "hsm_stub", "make-credentials", "--out", str(tmp_path)),
            *("--host", "hsm_stub", "--host", "127.0.0.1"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert _server_names(CredentialPaths(tmp_path)) == ["127.0.0.1", "hsm_stub"]
