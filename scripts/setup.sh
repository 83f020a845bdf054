#!/usr/bin/env bash
# Installs what this machine lacks, and nothing else: the Debian packages the project runs
# (PostgreSQL server, pcscd with the vpcd driver, pyscard's build needs, and Python's venv
# module where Debian ships it apart, Node.js and npm for the console's chart library), the
# Python environment in .venv (re-installed only when pyproject.toml changes) with the
# service, its tests, the terminal SDK's card reader and the load harness
# (`.[test,terminal,loadtest]`), and node_modules from package-lock.json (`npm ci`, again
# only when the lockfile changes).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null \
  || { echo "Python 3.11 or newer is required: install python3 (or set PYTHON=...)" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "Python 3.11 or newer is required (set PYTHON=...)" >&2; exit 1; }

# chromium: the browser tests render the web pages (API browser, console) in a real headless
# browser; fonts-wqy-zenhei gives its screenshots Chinese glyphs.
SYSTEM_PACKAGES=(postgresql postgresql-contrib pcscd vsmartcard-vpcd swig libpcsclite-dev chromium
  fonts-wqy-zenhei)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Debian keeps `python3 -m venv` working only with python3-venv (ensurepip) installed.
if [ ! -x .venv/bin/python ] && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  default="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
  if [ "$version" = "$default" ]; then missing+=(python3-venv); else missing+=("python$version-venv"); fi
fi
# Node.js and npm install the console's chart library (ECharts) from package-lock.json.
if [ -f package-lock.json ]; then
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A .venv left without pip by a failed earlier run is made again.
if [ -x .venv/bin/python ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,terminal,loadtest]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The console's ECharts, exactly as package-lock.json pins it (the service serves it from its
# own origin); the stamp names the lockfile it was installed from.
if [ -f package-lock.json ]; then
  npm_stamp="node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)"
  if [ ! -f "$npm_stamp" ]; then
    echo "installing the console's JavaScript dependencies into node_modules"
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
    touch "$npm_stamp"
  fi
fi
