# Sourced by scripts/test: the dashboard's browser tests drive Debian's
# Chromium through Playwright (never a browser Playwright downloads). Install
# it when missing and we are root (as CI is); otherwise say exactly what to
# install and stop: those tests are never skipped.
chromium_bin="${CHROMIUM:-$(command -v chromium || true)}"
if [ -z "$chromium_bin" ] || [ ! -x "$chromium_bin" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium for the browser tests (apt-get, once) ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null \
      || echo "error: apt-get install -y chromium failed" >&2
  fi
  chromium_bin="${CHROMIUM:-$(command -v chromium || true)}"
  if [ -z "$chromium_bin" ] || [ ! -x "$chromium_bin" ]; then
    echo "error: the dashboard's browser tests need Chromium. Install it with" >&2
    echo "    sudo apt-get update && sudo apt-get install -y chromium" >&2
    echo "(Debian/Ubuntu), or set CHROMIUM=/path/to/a/chromium binary." >&2
    exit 2
  fi
fi
