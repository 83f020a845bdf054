from __future__ import annotations

import pytest

from cardsvc.config import ConfigError, load_settings

BASE = {"CARDSVC_ADMIN_TOKEN": "t" * 16, "CARDSVC_DATA_KEY": "00" * 32}


def test_defaults_and_overrides():
    settings = load_settings({**BASE, "CARDSVC_PORT": "9000", "CARDSVC_HSM_TIMEOUT": "0.5"})
    assert settings.port == 9000 and settings.hsm_timeout == 0.5 and settings.hsm_port == 9510


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CARDSVC_DATA_KEY": "00" * 32}, "CARDSVC_ADMIN_TOKEN"),
        ({**BASE, "CARDSVC_ADMIN_TOKEN": "short"}, "CARDSVC_ADMIN_TOKEN"),
        ({"CARDSVC_ADMIN_TOKEN": "t" * 16}, "CARDSVC_DATA_KEY"),
        ({**BASE, "CARDSVC_DATA_KEY": "zz"}, "hex"),
        ({**BASE, "CARDSVC_DATA_KEY": "00" * 16}, "32 bytes"),
        ({**BASE, "CARDSVC_PORT": "eighty"}, "CARDSVC_PORT"),
        ({**BASE, "CARDSVC_PORT": "0"}, "CARDSVC_PORT"),
        ({**BASE, "CARDSVC_WORKERS": "0"}, "CARDSVC_WORKERS"),
        ({**BASE, "CARDSVC_LOG_LEVEL": "verbose"}, "CARDSVC_LOG_LEVEL"),
        ({**BASE, "CARDSVC_LOG_FORMAT": "text"}, "CARDSVC_LOG_FORMAT"),
        ({**BASE, "CARDSVC_DB_POOL_MIN": "5", "CARDSVC_DB_POOL_MAX": "2"}, "CARDSVC_DB_POOL"),
        ({**BASE, "CARDSVC_DB_CONNECT_TIMEOUT": "-1"}, "CARDSVC_DB_CONNECT_TIMEOUT"),
        ({**BASE, "CARDSVC_OPERATOR_SESSION_IDLE_SECONDS": "0"}, "IDLE_SECONDS"),
        (
            {
                **BASE,
                "CARDSVC_OPERATOR_SESSION_IDLE_SECONDS": "901",
                "CARDSVC_OPERATOR_SESSION_MAX_SECONDS": "900",
            },
            "CARDSVC_OPERATOR_SESSION_IDLE_SECONDS",
        ),
        ({**BASE, "CARDSVC_OPERATOR_SESSION_MAX_SECONDS": "700000"}, "at most a week"),
        ({**BASE, "CARDSVC_COOKIE_SECURE": "maybe"}, "CARDSVC_COOKIE_SECURE"),
        ({"CARDSVC_ADMIN_TOKEN_FILE": "/nonexistent/token"}, "CARDSVC_ADMIN_TOKEN_FILE"),
        ({**BASE, "CARDSVC_DATA_KEY": None, "CARDSVC_DATA_KEY_FILE": "/"}, "CARDSVC_DATA_KEY_FILE"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str | None], message: str):
    with pytest.raises(ConfigError, match=message):
        load_settings({k: v for k, v in env.items() if v is not None})


def test_operator_session_settings():
    settings = load_settings(BASE)
    assert settings.operator_session_idle_seconds == 900
    assert settings.operator_session_max_seconds == 28800 and not settings.cookie_secure
    settings = load_settings({**BASE, "CARDSVC_COOKIE_SECURE": "true"})
    assert settings.cookie_secure


def test_secret_from_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("f" * 20 + "\n")
    env = {"CARDSVC_ADMIN_TOKEN_FILE": str(path), "CARDSVC_DATA_KEY": "00" * 32}
    assert load_settings(env).admin_token == "f" * 20


def test_sign_in_allowances():
    defaults = load_settings(BASE)
    assert (defaults.sign_in_address_rate, defaults.sign_in_address_burst) == (20.0, 200.0)
    assert (defaults.sign_in_terminal_rate, defaults.sign_in_terminal_burst) == (0.1, 10.0)
    tuned = load_settings(
        {**BASE, "CARDSVC_SIGN_IN_ADDRESS_BURST": "1000", "CARDSVC_SIGN_IN_TERMINAL_RATE": "1"}
    )
    assert tuned.sign_in_address_burst == 1000.0 and tuned.sign_in_terminal_rate == 1.0
    assert (defaults.sign_in_failure_rate, defaults.sign_in_failure_burst) == (0.5, 20.0)
    failures = load_settings({**BASE, "CARDSVC_SIGN_IN_FAILURE_BURST": "5"})
    assert failures.sign_in_failure_burst == 5.0
