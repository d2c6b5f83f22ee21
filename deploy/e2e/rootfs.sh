#!/usr/bin/env bash
# Build the Debian 12 root filesystem that the end-to-end test boots with
# systemd-nspawn. The tree is cached: nothing is done when DIR/.complete names
# the same suite and packages (a changed list rebuilds it).
#
#   deploy/e2e/rootfs.sh [DIR]     (default /var/cache/agent-e2e/bookworm)
#
# The Debian mirror is $DEBIAN_MIRROR, else the one this machine's apt sources
# use for bookworm, else deb.debian.org.
set -euo pipefail

dir=${1:-/var/cache/agent-e2e/bookworm}
suite=bookworm
packages=systemd,systemd-sysv,dbus,procps,iproute2,curl,nodejs

stamp="$suite $packages"
if [[ -f $dir/.complete && $(cat "$dir/.complete") == "$stamp" ]]; then
  echo "rootfs.sh: $dir is ready"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "rootfs.sh: must run as root" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "rootfs.sh: debootstrap is missing (apt-get install -y debootstrap)" >&2
  exit 1
}

# find_mirror prints the first Debian archive URI the machine's apt sources use.
find_mirror() {
  local f words
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    # deb822: a stanza whose URIs end in /debian and whose Suites name bookworm.
    awk -v suite="$suite" '
      /^[[:space:]]*$/ { if (uri != "" && ok) { print uri; exit } uri = ""; ok = 0; next }
      /^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) uri = $i }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
      END { if (uri != "" && ok) print uri }
    ' "$f" | head -n1
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    # deb [options] URI suite components...
    while read -ra words; do
      [[ ${words[0]:-} == deb ]] || continue
      words=("${words[@]:1}")
      [[ ${words[0]:-} == \[* ]] && words=("${words[@]:1}")
      if [[ ${words[0]:-} =~ /debian/?$ && ${words[1]:-} == "$suite" ]]; then
        echo "${words[0]}"
      fi
    done <"$f"
  done
}

mirror=${DEBIAN_MIRROR:-$(find_mirror | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}

case $(realpath -m "$dir") in
  / | /usr | /var | /etc | /home | /root)
    echo "rootfs.sh: refusing to build into $dir" >&2
    exit 1
    ;;
esac
echo "rootfs.sh: debootstrap $suite into $dir from $mirror"
rm -rf "$dir"
mkdir -p "$dir"
debootstrap --variant=minbase --include="$packages" "$suite" "$dir" "$mirror"

# A machine id, a host name, and no getty on the console: the container boots to
# multi-user.target quietly.
: >"$dir/etc/machine-id"
echo agent-e2e >"$dir/etc/hostname"
rm -f "$dir/etc/systemd/system/getty.target.wants/"*
ln -sf /dev/null "$dir/etc/systemd/system/console-getty.service"
echo "$stamp" >"$dir/.complete"
echo "rootfs.sh: $dir is ready"
