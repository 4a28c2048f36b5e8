#!/usr/bin/env bash
# Installs Debian's `chromium` package when /usr/bin/chromium is missing: the status page test
# (tests/e2e/status_page.rs) loads /status in headless Chromium.
#
# Usage: ops/install-chromium.sh
# Needs root when Chromium is missing; does nothing when it is there. Waits up to 10 minutes for
# another apt or dpkg process to release its lock.
set -euo pipefail
say() { echo "install-chromium.sh: $*" >&2; }
die() { say "$*"; exit 1; }

chromium=/usr/bin/chromium
if [[ -x $chromium ]]; then
    say "$chromium is installed; nothing to do"
    exit 0
fi
[[ $(id -u) == 0 ]] || die "$chromium is missing; run this script as root, or: sudo apt-get install -y chromium"
command -v apt-get >/dev/null || die "$chromium is missing and there is no apt-get; install Chromium so that $chromium exists"

lock=(-o DPkg::Lock::Timeout=600)
say "installing chromium (this takes a few minutes)"
apt-get "${lock[@]}" update -qq
DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y -qq chromium >/dev/null
[[ -x $chromium ]] || die "apt-get installed chromium, but $chromium is still missing"
say "installed: $("$chromium" --version 2>/dev/null)"
