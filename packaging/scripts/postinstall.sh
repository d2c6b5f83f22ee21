#!/bin/sh
# After install or upgrade: make systemd see the unit. On upgrade, a running
# agent is handed over to the new program in place (agentctl upgrade): same
# PID, same app processes, no connection refused. Enabling is left to the
# admin (or user_data), once /etc/agent/agent.toml describes the app.
#
# agentctl upgrade exits 0 once the new program serves; 4 when the running
# agent predates in-place upgrades, and 3 when it cannot be reached although
# its unit is active: both fall back to a restart. Any other code (1: the new
# program refused the config, or the upgrade failed) fails the package's
# configuration and leaves the old agent running.
set -e

unit=agent.service
config=/etc/agent/agent.toml

say() {
  echo "agent postinst: $*" >&2
}

# restart restarts the agent on the new program, unless the new program
# refuses the config: then the old agent keeps running and this fails.
restart() {
  if ! agent check --config "$config" >/dev/null; then
    say "ERROR: the new agent refuses $config (above); the old agent keeps running."
    say "Fix the config, then run: systemctl restart $unit"
    exit 1
  fi
  if ! systemctl restart "$unit"; then
    say "ERROR: systemctl restart $unit failed; see: journalctl -u $unit"
    exit 1
  fi
}

upgrading=false
# deb: "configure OLD-VERSION" on upgrade; rpm: $1 is 2 or more on upgrade.
if { [ "${1:-}" = configure ] && [ -n "${2:-}" ]; } || [ "${1:-0}" -ge 2 ] 2>/dev/null; then
  upgrading=true
fi

if [ -d /run/systemd/system ]; then
  # Takes a new unit file; this does not restart the agent.
  systemctl daemon-reload || true
  if [ "$upgrading" = true ]; then
    state=$(systemctl is-active "$unit" 2>/dev/null) || true
    case $state in
      active | reloading)
        rc=0
        agentctl upgrade || rc=$?
        case $rc in
          0) ;;
          4)
            say "the running agent predates in-place upgrades: restarting it instead (the app restarts too)"
            restart
            ;;
          3)
            say "the agent is $state but its control socket does not answer: restarting it instead"
            restart
            ;;
          *)
            say "ERROR: agentctl upgrade failed (exit $rc, reason above): the running agent was not replaced."
            say "The new program is installed as /usr/bin/agent; once the cause is fixed, run: agentctl upgrade"
            exit 1
            ;;
        esac
        ;;
      activating)
        # Still starting, on the old program: start it again on the new one.
        say "the agent is still starting: restarting it on the new program"
        restart
        ;;
    esac
  fi
fi
exit 0
