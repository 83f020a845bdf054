"""The API description (``schema/openapi.yaml``, served as it is) and Swagger UI to browse it.

Swagger UI's files come from the ``swagger-ui-bundle-v2`` package (the bundle the connexion
project maintains) and are served by this service: the page loads nothing from anywhere else,
which its Content-Security-Policy enforces, so the browser works on a network without
internet. Only the few lines that point Swagger UI at ``/openapi.yaml`` are this project's.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Final

from swagger_ui_bundle import swagger_ui_path

from cardsvc.errors import NotFound

# cardsvc/schema is schema/ (a link in the checkout, package data in an installed wheel).
SPEC_PATH: Final = Path(__file__).resolve().parents[1] / "schema" / "openapi.yaml"

# Everything from the page's own origin; Swagger UI sets inline styles and data: images.
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)
ASSET_HEADERS: Final = {"Cache-Control": "public, max-age=86400"}

_VENDOR_ASSETS: Final = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

INITIALIZER: Final = b"""window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.yaml",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  });
};
"""

PAGE: Final = b"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>cardsvc API</title>
    <link rel="stylesheet" type="text/css" href="/docs/swagger-ui.css">
    <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
    <link rel="icon" type="image/png" href="/docs/favicon-16x16.png" sizes="16x16">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="/docs/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="/docs/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
"""


@functools.cache
def spec() -> bytes:
    """schema/openapi.yaml, byte for byte."""
    return SPEC_PATH.read_bytes()


def page() -> bytes:
    return PAGE


@functools.cache
def _vendor(name: str) -> bytes:
    return (Path(str(swagger_ui_path)) / name).read_bytes()


def asset(name: str) -> tuple[bytes, str]:
    """One of the page's files and its content type; ``NotFound`` for any other name."""
    if name == "swagger-initializer.js":
        return INITIALIZER, "text/javascript"
    content_type = _VENDOR_ASSETS.get(name)
    if content_type is None:
        raise NotFound(f"no such file of the API browser: {name}", code="NOT_FOUND")
    return _vendor(name), content_type
