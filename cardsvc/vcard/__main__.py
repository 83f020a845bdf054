"""``python -m cardsvc.vcard --port 35963 --state FILE [--blank]``: one virtual card in a
vpcd slot until SIGTERM or Ctrl-C.

The card's state lives in FILE and survives a restart; ``--blank`` makes a blank card there
when FILE does not exist yet (an existing card is always kept).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cardsvc.logging import configure_logging
from cardsvc.vcard.card import VirtualCard
from cardsvc.vcard.link import DEFAULT_PORT, CardSlot
from cardsvc.vcard.state import CardStateError, StateFile


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cardsvc.vcard", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="where vpcd listens")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="vpcd's port (slot)")
    parser.add_argument("--state", type=Path, required=True, help="the card's state file")
    parser.add_argument("--blank", action="store_true", help="create a blank card if missing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fmt = "console" if sys.stdout.isatty() else "json"  # a log file gets no colour codes
    configure_logging(
        os.environ.get("CARDSVC_LOG_FORMAT", fmt), os.environ.get("CARDSVC_LOG_LEVEL", "info")
    )
    store = StateFile(args.state)
    try:
        state = store.load_or_blank(create_blank=args.blank)
    except CardStateError as exc:
        print(f"{exc} (use --blank to make a blank card there)", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    slot = CardSlot(VirtualCard(state, persist=store.save), port=args.port, host=args.host)
    slot.insert()
    stop.wait()
    slot.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
