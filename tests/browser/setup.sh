#!/usr/bin/env bash
# Installs what the browser test needs, idempotently: Debian's chromium at /usr/bin/chromium and
# playwright-core (the driver library only: it never downloads a browser of its own) under
# tests/browser/node_modules. Run by `make test-browser`; safe to run again (each step is skipped when done).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ ! -x /usr/bin/chromium ]; then
    echo "setup.sh: installing Debian chromium"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "setup.sh: installing node and npm"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi

if [ ! -f "$here/node_modules/playwright-core/package.json" ]; then
    echo "setup.sh: installing playwright-core into $here/node_modules"
    # package.json pins the version; PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: the Debian chromium is used.
    (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent)
fi

/usr/bin/chromium --version 2>/dev/null  # its wrapper script prints a harmless shell warning on stderr
node -e "console.log('playwright-core ' + require('$here/node_modules/playwright-core/package.json').version)"
