#!/usr/bin/env bash
# Ensure the OS (Debian) packages the test suite needs are installed; installs missing ones when run as root.
set -euo pipefail

# One line per package: "<debian package>|<shell test that succeeds when it is already present>".
REQUIREMENTS=(
  "postgresql|compgen -G '/usr/lib/postgresql/*/bin/initdb'"
  "xrootd-server|command -v xrootd"
  "xrootd-client|command -v xrdcp"
  "redis-server|command -v redis-server"
  "chromium|command -v chromium"
)

log() { printf 'ensure-test-deps: %s\n' "$*" >&2; }

missing_packages() {
  local entry package check
  for entry in "${REQUIREMENTS[@]}"; do
    package=${entry%%|*}
    check=${entry#*|}
    if ! eval "$check" >/dev/null 2>&1; then
      printf '%s\n' "$package"
    fi
  done
}

mapfile -t missing < <(missing_packages)
if ((${#missing[@]} == 0)); then
  log "all present: $(printf '%s\n' "${REQUIREMENTS[@]%%|*}" | paste -sd' ')"
  exit 0
fi

log "missing OS packages: ${missing[*]}"
if ((EUID != 0)); then
  log "ERROR: not root, so not installing them. Install with: sudo apt-get install --no-install-recommends ${missing[*]}"
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  log "ERROR: apt-get not found (not Debian/Ubuntu?). Install these packages by hand: ${missing[*]}"
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log "running: apt-get update"
apt-get update
log "running: apt-get install -y --no-install-recommends ${missing[*]}"
apt-get install -y --no-install-recommends "${missing[@]}"

mapfile -t still_missing < <(missing_packages)
if ((${#still_missing[@]} != 0)); then
  log "ERROR: still missing after apt-get install: ${still_missing[*]}"
  exit 1
fi
log "installed: ${missing[*]}"
