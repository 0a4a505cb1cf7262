# Shared shell helpers of the image build scripts (sourced, not run).

# Where built bases, apt archives and images are cached: outside the clone, so a CI run that
# changed only Rust code reuses the Debian base.
UNCLOUD_CACHE="${UNCLOUD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/uncloud}"
IMAGE_CACHE="$UNCLOUD_CACHE/image"
IMAGE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$IMAGE_DIR/.." && pwd)"
DEBIAN_RELEASE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Seconds since the epoch, for timing steps.
now() { date +%s; }

# The Debian architecture name of an Uncloud architecture name (amd64 | arm64).
check_arch() {
  case "$1" in
    amd64 | arm64) ;;
    *) die "unknown architecture '$1' (expected amd64 or arm64)" ;;
  esac
}

# Package names from list files: comments and blank lines dropped.
read_packages() {
  sed -e 's/#.*//' -e 's/[[:space:]]//g' "$@" | grep -v '^$'
}

# SOURCE_DATE_EPOCH: from the environment, else the last commit's time, so rebuilding the
# same commit gives the same timestamps.
source_date_epoch() {
  if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    echo "$SOURCE_DATE_EPOCH"
  else
    git -C "$REPO_DIR" log -1 --format=%ct 2>/dev/null || date +%s
  fi
}

# Human-readable size of a file, in MiB with one decimal.
mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f", b / 1048576 }'; }
