#!/bin/bash
# EC2 user_data: bootstrap one Node.js web app supervised by the agent.
#
# Works on Amazon Linux 2023 (dnf) and Debian/Ubuntu (apt). Installs Node and
# git, creates the app user, clones and builds the app, installs the agent (a
# .deb/.rpm, or the static binary and `agent install`), writes
# /etc/agent/agent.toml, validates it, and starts the agent. `systemctl enable
# --now agent` returns once the app serves (the unit is Type=notify), so when this
# script ends the instance is ready for the load balancer.
#
# This file is a Terraform template (deploy/terraform/main.tf renders it with
# templatefile): the settings below are filled in there. To run it by hand,
# export the same variables (empty for unused ones) and run it as root. The
# script itself never uses the $-brace form, which Terraform would take for its own.
#
# Proxy mode (PROXY_PORT set): the agent owns the traffic port and forwards to
# the app on 127.0.0.1:APP_PORT (a reload starts the new release on APP_PORT+1),
# holds requests while the app restarts, and answers /health.html there too: the
# target group forwards to PROXY_PORT and checks /health.html on traffic-port.
# The app gets PORT from the agent and HOST=127.0.0.1 (an app that binds HOST
# stays on loopback; `next start` takes -H 127.0.0.1), and the health port is
# bound to loopback.
#
# Everything is logged to /var/log/agent-bootstrap.log and the console; each
# step starts with a "bootstrap: step NAME" line, and a failure ends with
# "bootstrap: failed in step NAME (exit N)". The steps: packages, user, clone,
# npm, build, download, install (.deb/.rpm), config, start, health.
set -euo pipefail
set -o errtrace # the ERR trap below fires inside functions too

# Settings.
readonly APP_NAME="${APP_NAME}"           # name shown in status and logs
readonly APP_REPO="${APP_REPO}"           # git URL of the app
readonly APP_REF="${APP_REF}"             # branch or tag to deploy
readonly APP_DIR="${APP_DIR}"             # where the app lives
readonly APP_USER="${APP_USER}"           # system user the app runs as
readonly APP_COMMAND="${APP_COMMAND}"     # argv, words separated by spaces: "npm start"
readonly APP_PORT="${APP_PORT}"           # the app's PORT
readonly NODE_MAJOR="${NODE_MAJOR}"       # Node major on Amazon Linux (nodejsNN); apt takes the distro's
readonly MAX_RSS="${MAX_RSS}"             # memory.max_rss: "700MB", "0" = off
readonly HEALTH_PORT="${HEALTH_PORT}"     # the agent's /health.html port (the target group checks it without the proxy)
readonly PROXY_PORT="${PROXY_PORT}"       # the agent's traffic port (the target group forwards to it); empty = no proxy
readonly STOP_DRAIN="${STOP_DRAIN}"       # stop.drain: health 503 this long before the app stops ("20s"); empty = 0s
readonly AGENT_PKG_URL="${AGENT_PKG_URL}" # URL of the agent .deb or .rpm; or empty and...
readonly AGENT_BIN_URL="${AGENT_BIN_URL}" # ...URL of the static agent binary
readonly AGENT_SHA256="${AGENT_SHA256}"   # sha256 of the download; empty = not checked

# npm for distributions whose nodejs package lacks it (Debian, Ubuntu): the
# registry's own tarball, checked against this sha512. Debian's npm package
# instead pulls in about 850 packages (280 MB) and took minutes to install.
readonly NPM_VERSION=10.9.9 # supports Node ^18.17 || >=20.5
readonly NPM_SHA512=d60fba8cb42f688b81e33c2f1cbef2ad7b977166700ec0ad057f1b6d60ea6ef2524abf673e20c35931cd8305d1dbb8887134d6eefdc0e7b8435bd458bf65b862

exec > >(tee -a /var/log/agent-bootstrap.log) 2>&1
tee_pid=$!
step=start-up
tmp=""

log() { echo "bootstrap: $*"; }
die() {
  echo "bootstrap: $step: $*" >&2
  exit 1
}

# step NAME: the next step, named in the log and in the failure line.
step() {
  step=$1
  log "step $step (at $SECONDS s)"
}

# In subshells too (errtrace), but said once: by the main shell.
trap 'rc=$?; [[ $BASHPID != "$$" ]] || echo "bootstrap: $step: command failed at line $LINENO (exit $rc)" >&2' ERR

# on_exit: remove the temporary files, name the failed step, and let tee write
# the last lines before the script ends.
on_exit() {
  local rc=$?
  if [[ -n $tmp ]]; then
    rm -rf "$tmp"
  fi
  if ((rc != 0)); then
    echo "bootstrap: failed in step $step (exit $rc) after $SECONDS s" >&2
  fi
  exec >&- 2>&-
  wait "$tee_pid" || true
}
trap on_exit EXIT

# retry N CMD...: run CMD up to N times, 5 s apart (mirrors and git hosts blink).
retry() {
  local tries=$1 n=1
  shift
  until "$@"; do
    if ((n >= tries)); then
      return 1
    fi
    log "retrying ($n/$tries): $*"
    n=$((n + 1))
    sleep 5
  done
}

[[ $(id -u) -eq 0 ]] || die "run as root"
[[ -n $APP_REPO ]] || die "APP_REPO is empty"
[[ -n $AGENT_PKG_URL || -n $AGENT_BIN_URL ]] || die "set AGENT_PKG_URL or AGENT_BIN_URL"
[[ $APP_PORT =~ ^[0-9]+$ ]] || die "APP_PORT is not a port number: $APP_PORT"
[[ -z $PROXY_PORT || $PROXY_PORT =~ ^[0-9]+$ ]] || die "PROXY_PORT is not a port number: $PROXY_PORT"
[[ -z $STOP_DRAIN || $STOP_DRAIN =~ ^[0-9]+(ms|s|m)$ ]] || die "STOP_DRAIN is not a duration such as 20s: $STOP_DRAIN"
tmp=$(mktemp -d)

# fetch URL FILE [ALGO SUM]: download URL (https or http only) to FILE and,
# with a checksum, check it (ALGO: sha256 or sha512).
fetch() {
  retry 3 curl -fsSL --proto '=https,http' -o "$2" "$1"
  if (($# > 2)); then
    echo "$4  $2" | "$3sum" -c --quiet - || die "checksum mismatch for $1 (want $3 $4)"
  fi
}

# --- packages: Node, git ------------------------------------------------------
step packages
if command -v dnf >/dev/null; then
  pkg=dnf
  retry 3 dnf install -y git tar
  if ! retry 3 dnf install -y "nodejs$NODE_MAJOR" "nodejs$NODE_MAJOR-npm"; then
    retry 3 dnf install -y nodejs npm
  fi
  # Versioned packages install node-NN and npm-NN; make `node` and `npm` resolve.
  if ! command -v node >/dev/null && [[ -x /usr/bin/node-$NODE_MAJOR ]]; then
    alternatives --set node "/usr/bin/node-$NODE_MAJOR" || true
  fi
  for tool in node npm npx; do
    if ! command -v "$tool" >/dev/null && [[ -x /usr/bin/$tool-$NODE_MAJOR ]]; then
      ln -sf "/usr/bin/$tool-$NODE_MAJOR" "/usr/bin/$tool"
    fi
  done
elif command -v apt-get >/dev/null; then
  pkg=apt
  export DEBIAN_FRONTEND=noninteractive
  retry 3 apt-get update -q
  retry 3 apt-get install -y -q --no-install-recommends ca-certificates curl git nodejs
else
  die "neither dnf nor apt-get found"
fi
command -v node >/dev/null || die "node is not installed"
log "node $(node --version)"

# --- the app user and the app -------------------------------------------------
step user
app_home=/home/$APP_USER
if ! id -u "$APP_USER" >/dev/null 2>&1; then
  useradd --system --create-home --home-dir "$app_home" --shell /usr/sbin/nologin "$APP_USER"
fi
app_home=$(getent passwd "$APP_USER" | cut -d: -f6)

# ensure_npm: install npm when the nodejs package came without it.
ensure_npm() {
  if command -v npm >/dev/null; then
    return 0
  fi
  step npm
  fetch "https://registry.npmjs.org/npm/-/npm-$NPM_VERSION.tgz" "$tmp/npm.tgz" sha512 "$NPM_SHA512"
  rm -rf /usr/local/lib/node_modules/npm
  install -d /usr/local/lib/node_modules/npm /usr/local/bin
  tar -xzf "$tmp/npm.tgz" -C /usr/local/lib/node_modules/npm --strip-components=1 --no-same-owner
  local tool
  for tool in npm npx; do
    chmod 0755 "/usr/local/lib/node_modules/npm/bin/$tool-cli.js"
    ln -sf "../lib/node_modules/npm/bin/$tool-cli.js" "/usr/local/bin/$tool"
  done
  hash -r
  command -v npm >/dev/null || die "npm is not installed"
}

# as_app CMD...: run CMD as the app user in the app directory, with its own HOME
# (npm keeps its cache there), without a login shell.
as_app() {
  (cd "$APP_DIR" && runuser -u "$APP_USER" -- env HOME="$app_home" NODE_ENV=production "$@")
}

install -d -o "$APP_USER" -g "$APP_USER" -m 0755 "$APP_DIR"
step clone
if [[ -d $APP_DIR/.git ]]; then
  log "updating $APP_DIR to $APP_REF"
  as_app git fetch --depth 1 origin "$APP_REF"
  as_app git reset --hard FETCH_HEAD
else
  log "cloning $APP_REPO ($APP_REF) into $APP_DIR"
  (cd / && retry 3 runuser -u "$APP_USER" -- env HOME="$app_home" \
    git clone --depth 1 --branch "$APP_REF" "$APP_REPO" "$APP_DIR")
fi
if [[ -f $APP_DIR/package.json ]]; then
  ensure_npm
  step build
  log "npm $(npm --version)"
  # Dev dependencies are needed by most build steps; npm ci installs them with
  # --include=dev even when NODE_ENV is production.
  if [[ -f $APP_DIR/package-lock.json || -f $APP_DIR/npm-shrinkwrap.json ]]; then
    retry 3 as_app npm ci --include=dev --no-audit --no-fund
  else
    retry 3 as_app npm install --include=dev --no-audit --no-fund
  fi
  as_app npm run build --if-present
fi

# --- the agent ------------------------------------------------------------------
# fetch_agent URL FILE: download the agent, checking AGENT_SHA256 when set.
fetch_agent() {
  if [[ -n $AGENT_SHA256 ]]; then
    fetch "$1" "$2" sha256 "$AGENT_SHA256"
  else
    fetch "$1" "$2"
  fi
}

# write_config: /etc/agent/agent.toml from the settings above (mode 0640: it may
# grow secrets in [app] env).
write_config() {
  local cmd="" sep="" word
  set -f
  # Word splitting is the point: APP_COMMAND is argv separated by spaces.
  # shellcheck disable=SC2086
  for word in $APP_COMMAND; do
    cmd="$cmd$sep\"$word\""
    sep=", "
  done
  set +f
  # Without the proxy the app owns APP_PORT and the load balancer reaches it;
  # with it, the agent gives the app its PORT (APP_PORT, or APP_PORT+1 during a
  # reload) and the app stays on loopback.
  local env="PORT = \"$APP_PORT\"" health=":$HEALTH_PORT" proxy="" stop=""
  # On shutdown (an instance refresh, a scale-in) the health page says 503 for
  # STOP_DRAIN before the app stops, so the load balancer takes the target out.
  if [[ -n $STOP_DRAIN ]]; then
    stop="
[stop]
drain = \"$STOP_DRAIN\"
"
  fi
  if [[ -n $PROXY_PORT ]]; then
    env='HOST = "127.0.0.1"'
    health="127.0.0.1:$HEALTH_PORT"
    proxy="
[proxy]
listen = \":$PROXY_PORT\"
upstream = \"127.0.0.1:$APP_PORT\"
spare_upstream = \"127.0.0.1:$((APP_PORT + 1))\"
hold = \"30s\"
idle_timeout = \"75s\"
"
  fi
  install -d -m 0755 /etc/agent
  cat >/etc/agent/agent.toml.new <<EOF
# Written by user_data on $(date -u +%Y-%m-%dT%H:%M:%SZ). Keys: agent.toml.example.
name = "$APP_NAME"

[app]
command = [$cmd]
dir = "$APP_DIR"
user = "$APP_USER"
env = { NODE_ENV = "production", $env }

[node]
max_old_space_size = "auto"

[memory]
max_rss = "$MAX_RSS"
$stop
[probe]
http = "http://127.0.0.1:$APP_PORT/"

[health]
listen = "$health"
path = "/health.html"
$proxy
[log]
format = "json"
EOF
  chmod 0640 /etc/agent/agent.toml.new
  mv -f /etc/agent/agent.toml.new /etc/agent/agent.toml
}

if [[ -n $AGENT_PKG_URL ]]; then
  case $AGENT_PKG_URL in
    *.deb) file=$tmp/agent.deb ;;
    *.rpm) file=$tmp/agent.rpm ;;
    *) die "AGENT_PKG_URL must end in .deb or .rpm: $AGENT_PKG_URL" ;;
  esac
  step download
  fetch_agent "$AGENT_PKG_URL" "$file"
  step install
  if [[ $pkg == apt ]]; then
    # The packaged /etc/agent/agent.toml is a conffile: keep the one written
    # below without asking (there is no terminal to ask on).
    retry 3 apt-get install -y -q -o Dpkg::Options::=--force-confdef \
      -o Dpkg::Options::=--force-confold "$file"
  else
    retry 3 dnf install -y "$file"
  fi
  step config
  write_config
  /usr/bin/agent check --config /etc/agent/agent.toml
else
  step download
  fetch_agent "$AGENT_BIN_URL" "$tmp/agent"
  chmod 0755 "$tmp/agent"
  step config
  write_config
  "$tmp/agent" check --config /etc/agent/agent.toml
fi

# Both return once the app serves (Type=notify), or fail if it cannot start.
step start
was_active=false
if systemctl is-active --quiet agent; then
  was_active=true
fi
if [[ -n $AGENT_PKG_URL ]]; then
  systemctl enable --now agent
else
  # Copies itself to /usr/bin/agent, writes the unit, links agentctl,
  # daemon-reload, enable --now; keeps the config just written.
  "$tmp/agent" install --config /etc/agent/agent.toml
fi
if $was_active; then
  # A second run: the app was rebuilt and the config rewritten.
  log "the agent was running already: restarting it"
  systemctl restart agent
fi
systemctl --no-pager --lines=0 status agent || true
step health
# What the load balancer checks: the traffic port with the proxy, else the health port.
check_port=$HEALTH_PORT
if [[ -n $PROXY_PORT ]]; then
  check_port=$PROXY_PORT
fi
retry 6 curl -fsS -o /dev/null "http://127.0.0.1:$check_port/health.html"
agentctl status || true
log "done in $SECONDS s"
