"""cardsvc's credentials for the HSM link, from the settings: a mutual-TLS client context.

There is no plain-TCP fallback: missing or unusable files are a ``ConfigError`` whose one-line
message names the variables, raised when the service starts.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cardsvc.config import ConfigError, Settings
from cardsvc.hsm.client import HsmClient
from hsmlink.credentials import CredentialsError, client_context

_VARIABLES = "CARDSVC_HSM_CA_FILE, CARDSVC_HSM_CERT_FILE and CARDSVC_HSM_KEY_FILE"


def hsm_tls(settings: Settings) -> ssl.SSLContext:
    """The HSM link's TLS context; ``ConfigError`` if the credentials are missing or bad."""
    files = (settings.hsm_ca_file, settings.hsm_cert_file, settings.hsm_key_file)
    if not all(files):
        raise ConfigError(
            f"{_VARIABLES} are required: the HSM link is mutual TLS only"
            " (make them with 'python -m hsm_stub make-credentials --out DIR')"
        )
    ca_file, cert_file, key_file = (Path(name) for name in files)
    try:
        return client_context(ca_file, cert_file, key_file)
    except CredentialsError as exc:
        raise ConfigError(str(exc)) from None


def hsm_client(settings: Settings, *, timeout: float | None = None) -> HsmClient:
    """The service's HSM client, as configured (not yet started)."""
    return HsmClient(
        settings.hsm_host,
        settings.hsm_port,
        tls=hsm_tls(settings),
        connections=settings.hsm_connections,
        timeout=settings.hsm_timeout if timeout is None else timeout,
    )
