#!/usr/bin/env bash
# Install what the end-to-end test needs on this machine (systemd-nspawn,
# debootstrap, shellcheck, make, git) and build the cached Debian 12 root filesystem.
#
#   deploy/e2e/prepare.sh [DIR]    (default /var/cache/agent-e2e/bookworm)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ $(id -u) -ne 0 ]]; then
  echo "prepare.sh: must run as root" >&2
  exit 1
fi

missing=()
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v make >/dev/null || missing+=(make)
command -v git >/dev/null || missing+=(git) # git daemon serves the app to user_data.sh
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

"$here/rootfs.sh" "$@"
