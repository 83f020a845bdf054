"""The console's and the public page's files: a fixed list, read from the package.

A request names a file; it is looked up in the list made when the module is loaded (the
files of ``static/`` and the ECharts build), never joined to a path, so no request reaches
any other file. ECharts comes from the ``echarts`` npm package that scripts/setup.sh (and the
Dockerfile) install into ``node_modules`` beside the package; without it the name answers
404 and the pages say the charts are missing instead of drawing them.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Final

from cardsvc.errors import NotFound

STATIC: Final = Path(__file__).resolve().parent / "static"
# node_modules/ of the checkout (or of /app in the image), beside the cardsvc package.
ECHARTS_NAME: Final = "echarts.min.js"
ECHARTS_PATH: Final = (
    Path(__file__).resolve().parents[2] / "node_modules" / "echarts" / "dist" / ECHARTS_NAME
)

# Only the page's own origin, no inline script or style, never inside a frame. ECharts sets
# element styles through the DOM, which a style-src without 'unsafe-inline' allows.
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files, revalidated on every load: a new release is seen at once.
    "Cache-Control": "no-cache",
}

CONTENT_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]*\.(html|js|css|json|svg)$")
CONSOLE_PAGE: Final = "index.html"
PUBLIC_PAGE: Final = "public.html"


@functools.cache
def _files() -> dict[str, Path]:
    files = {p.name: p for p in STATIC.iterdir() if p.is_file() and _NAME.match(p.name)}
    files[ECHARTS_NAME] = ECHARTS_PATH
    return files


def names() -> list[str]:
    """Every file name the service answers under ``/console/static/``."""
    return sorted(_files())


def echarts_available() -> bool:
    return ECHARTS_PATH.is_file()


@functools.cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


def asset(name: str) -> tuple[bytes, str]:
    """One file and its content type; ``NotFound`` for any name not in the list (or the
    ECharts build when it is not installed)."""
    path = _files().get(name)
    if path is None or not path.is_file():
        raise NotFound(f"no such file of the console: {name}", code="NOT_FOUND")
    return _read(path), CONTENT_TYPES[path.suffix]


def page(name: str) -> bytes:
    return asset(name)[0]
