#!/usr/bin/env bash
# The Debian packages the project needs, by what they are for; one list for `make setup`
# and for CI (.ci/run).
#
#   deploy/debian-packages.sh GROUP...      install what is missing (as root with apt-get),
#                                           otherwise print the one command that would
#   deploy/debian-packages.sh --check GROUP...   only say what is missing (exit 1 if any)
#
# Groups:
#   run     the local stack of `make run`: clamd, PostgreSQL and RabbitMQ where absent
#   test    the main suite on top: Debian's ClamAV test files, Chromium and npm
#           (browser tests), make
#   deploy  the compose deployment's private engine (deploy/engine.sh): Docker's
#           daemon and client, debootstrap for the base image where no registry is
#           reachable, ip and nsenter for its network namespace
#   bench   `make bench`: wrk (HTTP load), poppler-utils (pdftoppm, a baseline of
#           bench/media.py), npm (stock Uppy Companion for bench/gateway.py)
#
# Installing docker.io on a machine that runs services (systemd) starts Docker's own
# daemon there, which then adds its bridge and firewall rules to the host; the deploy
# engine needs none of that (it starts its own daemon in a namespace) and stops nothing
# it did not start. CI machines of this project do not start services from packages.
set -euo pipefail

check_only=0
if [[ ${1:-} == --check ]]; then
  check_only=1
  shift
fi
(($#)) || { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

missing=()
want() { # PACKAGE [COMMAND|PATH]: add PACKAGE unless the command or path is there
  local package=$1 probe=${2:-$1}
  if [[ $probe == /* ]]; then [[ -e $probe ]] && return; else command -v "$probe" >/dev/null && return; fi
  # /usr/sbin is not on every user's PATH.
  [[ -x /usr/sbin/$probe || -x /sbin/$probe ]] && return
  missing+=("$package")
}

for group in "$@"; do
  case $group in
    run)
      want clamav-daemon clamd
      want clamav clamscan
      want postgresql /usr/lib/postgresql
      want rabbitmq-server rabbitmq-server
      ;;
    test)
      want clamav-testfiles /usr/share/clamav-testfiles
      want chromium chromium
      want npm npm
      want make make
      ;;
    deploy)
      want docker.io dockerd
      want debootstrap debootstrap
      want iproute2 ip
      want util-linux nsenter
      ;;
    bench)
      want wrk wrk
      want poppler-utils pdftoppm
      want npm npm
      ;;
    *) echo "debian-packages: unknown group '$group' (run, test, deploy, bench)" >&2; exit 2 ;;
  esac
done

((${#missing[@]})) || exit 0
if ((check_only)); then
  echo "missing Debian packages: ${missing[*]}"
  exit 1
fi
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
  echo "missing Debian packages: ${missing[*]}"
  echo "  install them with:  sudo apt-get install -y --no-install-recommends ${missing[*]}"
  exit 0
fi
echo "== installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
