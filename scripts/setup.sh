#!/usr/bin/env bash
# Makes this machine ready for ns8ctl's tests or demo: checks Node.js, then the Debian packages
# they run for real (Redis, Podman, a registry, ...). Missing packages are installed with apt-get
# when running as root on Debian, each one named; otherwise one line says what to install and the
# script exits 1. Quiet and quick (dpkg queries only) when everything is there.
#
# Usage: scripts/setup.sh [test|demo]     (default: test)
set -euo pipefail

purpose=${1:-test}

# What the tests use: the embedded Redis, rootless Podman with a loopback registry, the sandbox
# node builder (debootstrap), git sources with signed commits, the NS8 Python agent runtime,
# backups (restic, rsync, and rclone as a restic REST server on loopback).
test_packages=(redis-server podman runc crun skopeo buildah docker-registry busybox-static debootstrap
  uidmap git gnupg slirp4netns fuse-overlayfs python3 python3-redis restic rsync rclone)
# What the demo uses: a sandbox node with the example images.
demo_packages=(redis-server podman runc crun skopeo buildah docker-registry busybox-static debootstrap
  uidmap slirp4netns fuse-overlayfs)

case "$purpose" in
  test) need=("${test_packages[@]}") ;;
  demo) need=("${demo_packages[@]}") ;;
  *) echo "usage: scripts/setup.sh [test|demo]" >&2; exit 2 ;;
esac

if ! command -v node >/dev/null; then
  echo "setup: node is not installed: ns8ctl needs Node.js >= 20.19 (Debian 12's nodejs is 18: install Node 20 from nodejs.org or NodeSource)" >&2
  exit 1
fi
node -e 'const [a,b]=process.versions.node.split(".").map(Number); if (a < 20 || (a === 20 && b < 19)) { console.error(`setup: Node.js ${process.versions.node} is too old: ns8ctl needs >= 20.19`); process.exit(1); }'

if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
  missing_cmds=()
  for c in redis-server podman skopeo; do command -v "$c" >/dev/null || missing_cmds+=("$c"); done
  if [ ${#missing_cmds[@]} -gt 0 ]; then
    echo "setup: this is not a Debian system and ${missing_cmds[*]} are missing: install the equivalents of: ${need[*]}" >&2
    exit 1
  fi
  exit 0
fi

missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "setup: the ${purpose} needs these Debian packages: ${missing[*]}; install them as root: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "setup: installing Debian packages for the ${purpose}:"
for p in "${missing[@]}"; do echo "  - $p"; done
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
