#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/test_app.py drives `i2vgen app` in it through
# Playwright) unless it is already there. Needs root for apt-get; the tests never download a browser.
#   scripts/install_browser.sh
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "scripts/install_browser.sh: no /usr/bin/chromium and no root apt-get here: the browser tests will fail" \
       "until Chromium is installed (Debian: apt-get install chromium; or set I2VGEN_CHROMIUM)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium >/dev/null
