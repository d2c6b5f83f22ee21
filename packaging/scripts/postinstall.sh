#!/bin/sh
# After install or upgrade: make systemd see the unit; on upgrade, restart a
# running agent so the new binary takes over. Enabling is left to the admin
# (or user_data), once /etc/agent/agent.toml describes the app.
set -e

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  # deb: "configure OLD-VERSION" on upgrade; rpm: $1 is 2 or more on upgrade.
  if { [ "${1:-}" = configure ] && [ -n "${2:-}" ]; } || [ "${1:-0}" -ge 2 ] 2>/dev/null; then
    systemctl try-restart agent.service || true
  fi
fi
exit 0
