#!/usr/bin/env bash
# Checks the Prometheus alerting rules and runs their unit tests, and checks the example
# configuration that scrapes /metrics with its token:
#   promtool check rules ops/prometheus/alerts.yml
#   promtool test rules  ops/prometheus/alerts_test.yml
#   promtool check config --syntax-only ops/prometheus/prometheus.yml
#
# Usage: ops/check-alerts.sh
# Installs the Debian package `prometheus` (which ships promtool) when promtool is missing; that
# needs root. Exits non-zero when a rule is invalid or a test fails.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
say() { echo "check-alerts.sh: $*" >&2; }
die() { say "$*"; exit 1; }

if ! command -v promtool >/dev/null; then
    [[ $(id -u) == 0 ]] || die "promtool is missing; run as root or: sudo apt-get install -y prometheus"
    command -v apt-get >/dev/null || die "promtool is missing and there is no apt-get; install Prometheus's promtool and run again"
    say "installing prometheus (for promtool)"
    apt-get update -qq
    # Wait for another apt run instead of failing on its lock.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
        prometheus >/dev/null
    command -v promtool >/dev/null || die "installed prometheus but there is still no promtool"
fi

promtool check rules ops/prometheus/alerts.yml
promtool test rules ops/prometheus/alerts_test.yml
# The example scrape configuration, with its token file: the syntax only, as that file is not here.
promtool check config --syntax-only ops/prometheus/prometheus.yml
