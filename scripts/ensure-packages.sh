#!/usr/bin/env bash
# Install the given Debian packages, but only those that are not installed yet.
#
# CI machines start fresh, developer machines usually have everything already:
# asking apt only when something is missing keeps reruns fast and offline, and
# `apt-get update` (slow, network) runs at most once per call, and only then.
#
# Usage: scripts/ensure-packages.sh PKG...
set -euo pipefail

missing=()
for pkg in "$@"; do
    # dpkg-query prints "install ok installed" only for a fully installed
    # package; removed-but-configured packages must be reinstalled too.
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "error: missing packages (${missing[*]}) and not root; install them by hand" >&2
    exit 1
fi

echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
