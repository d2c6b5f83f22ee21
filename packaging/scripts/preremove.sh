#!/bin/sh
# Before removal (not upgrade): stop and disable the agent.
set -e

# deb: "remove"; rpm: $1 is 0 on removal.
if [ "${1:-}" = remove ] || [ "${1:-}" = 0 ]; then
  if [ -d /run/systemd/system ]; then
    systemctl disable --now agent.service || true
  else
    systemctl disable agent.service >/dev/null 2>&1 || true
  fi
fi
exit 0
