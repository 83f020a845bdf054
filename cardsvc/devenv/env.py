"""``python -m cardsvc.devenv.env``: the demo's settings as shell exports.

``scripts/demo.sh`` keeps its secrets in files under ``var/secrets`` (mode 0600) and hands
them to its children in their environment, so a command started by hand in another shell
finds none of them (``CARDSVC_ADMIN_TOKEN must be set``). This prints the settings the demo
gives cardsvc, secrets as ``*_FILE`` paths (never their values), for
``eval "$(.venv/bin/python -m cardsvc.devenv.env)"``; then ``python -m cardsvc ...`` and
``python -m hsm_stub ...`` beside the running demo use the demo's database, keys and HSM.

It reads the same variables the demo reads (``DATABASE_URL``, ``CARDSVC_PG_PORT``,
``CARDSVC_HOST``/``PORT``, ``CARDSVC_HSM_HOST``/``PORT``), so run it with the overrides the
demo was started with.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class DemoEnvError(Exception):
    """The demo's files are not there (it never ran with this state folder)."""


def demo_env(var: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The variables the demo gives cardsvc (and hsm_stub), secrets by file."""
    secrets = var / "secrets"
    tls = secrets / "hsm-tls"
    needed = [secrets / "admin_token", secrets / "data_key", tls / "ca.pem", tls / "client.pem"]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise DemoEnvError(
            f"no demo secrets in {secrets} (missing {', '.join(missing)}):"
            " run scripts/demo.sh once first"
        )
    pg_port = env.get("CARDSVC_PG_PORT", "5433")
    hsm_host = env.get("CARDSVC_HSM_HOST", "127.0.0.1")
    hsm_port = env.get("CARDSVC_HSM_PORT", "9510")
    return {
        "DATABASE_URL": env.get(
            "DATABASE_URL", f"postgresql://cardsvc@127.0.0.1:{pg_port}/cardsvc"
        ),
        "CARDSVC_ADMIN_TOKEN_FILE": str(secrets / "admin_token"),
        "CARDSVC_DATA_KEY_FILE": str(secrets / "data_key"),
        "CARDSVC_HOST": env.get("CARDSVC_HOST", "127.0.0.1"),
        "CARDSVC_PORT": env.get("CARDSVC_PORT", "8080"),
        "CARDSVC_HSM_HOST": hsm_host,
        "CARDSVC_HSM_PORT": hsm_port,
        "CARDSVC_HSM_CA_FILE": str(tls / "ca.pem"),
        "CARDSVC_HSM_CERT_FILE": str(tls / "client.pem"),
        "CARDSVC_HSM_KEY_FILE": str(tls / "client.key"),
        # The demo's cardsvc runs in the checkout: its anchors are in the default folder there.
        "CARDSVC_AUDIT_ANCHOR_DIR": env.get(
            "CARDSVC_AUDIT_ANCHOR_DIR", str(ROOT / "var" / "audit-anchors")
        ),
        # hsm_stub's own variables (its LMK is var/secrets/hsm_lmk: pass --lmk-file).
        "HSM_HOST": hsm_host,
        "HSM_PORT": hsm_port,
        "HSM_KEYSTORE": str(var / "hsm"),
        "HSM_CREDENTIALS": str(tls),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cardsvc.devenv.env",
        description="print the running demo's settings as shell exports (secrets as file paths)",
    )
    parser.add_argument("--var", type=Path, default=ROOT / "var", help="the demo's state folder")
    args = parser.parse_args(argv)
    try:
        values = demo_env(args.var.resolve(), os.environ)
    except DemoEnvError as exc:
        sys.stderr.write(f"cardsvc.devenv.env: {exc}\n")
        return 1
    for name, value in values.items():
        sys.stdout.write(f"export {name}={shlex.quote(value)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
