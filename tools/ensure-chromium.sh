#!/usr/bin/env bash
# The browser test drives Debian's chromium (Playwright's own browser download cannot work offline).
# Install it when missing and we may; otherwise that one test skips and says why.
set -u
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped"
else
  echo "note: chromium is not installed (apt-get install chromium); the browser test will be skipped"
fi
exit 0
