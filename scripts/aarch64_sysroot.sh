#!/usr/bin/env bash
# Build (once) an aarch64 user space in which qemu-user runs hwq's cross-compiled artifacts on an
# x86 host, for the bit-exactness tests of the Raspberry Pi targets:
#
#   $CACHE/root   Debian bookworm arm64 packages (CPython 3.11 and the libraries it and TVM's
#                 runtime link against), unpacked with `dpkg -x`: nothing is installed system-wide
#   $CACHE/site   the aarch64 wheels of apache-tvm, apache-tvm-ffi and numpy (pip --platform)
#
# apt runs as this user with a private state directory under $CACHE (its own sources list for the
# arm64 architecture), so the host's dpkg database and apt configuration are left untouched.
# Safe to run again: a finished build leaves $CACHE/.complete and is not redone. On success the
# last line printed is $CACHE. Needs network access, apt-get, dpkg-deb and qemu-aarch64.
#
# Usage: scripts/aarch64_sysroot.sh            (cache: ~/.cache/hwq/aarch64, or $HWQ_AARCH64_CACHE)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${HWQ_AARCH64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hwq/aarch64}
MIRROR=${HWQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm                 # python3.11, the same minor version as the build venv's
PYVER=3.11
# the pins of pyproject.toml: the runtime that loads a library should be the one that built it
WHEELS="apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy<2.3"
DEBS="python${PYVER}-minimal libpython${PYVER}-stdlib libstdc++6 libgcc-s1"
PIP=${PIP:-}
if [ -z "$PIP" ]; then
  if [ -x .venv/bin/python ]; then PIP=".venv/bin/python -m pip"; else PIP="python3 -m pip"; fi
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9                        # two test runs at once: the second waits, then finds the build done
if [ -f "$CACHE/.complete" ]; then
  echo "$CACHE"
  exit 0
fi
for tool in apt-get apt-cache dpkg-deb flock; do
  command -v "$tool" >/dev/null 2>&1 || { echo "aarch64_sysroot: '$tool' not found" >&2; exit 2; }
done
QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64) \
  || { echo "aarch64_sysroot: neither qemu-aarch64-static nor qemu-aarch64 found (package qemu-user)" >&2; exit 2; }

# --- Debian arm64 packages, resolved and downloaded by a private apt (no root, no system change)
APT="$CACHE/apt"
mkdir -p "$APT/etc/apt.conf.d" "$APT/etc/preferences.d" "$APT/etc/sources.list.d" \
         "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs"
KEYRING=${HWQ_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
echo "deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE main" > "$APT/etc/sources.list"
touch "$APT/status"
apt_opts=(-o "Dir::Etc=$APT/etc" -o "Dir::Etc::sourcelist=$APT/etc/sources.list"
          -o "Dir::Etc::sourceparts=$APT/etc/sources.list.d" -o "Dir::Etc::parts=$APT/etc/apt.conf.d"
          -o "Dir::Etc::preferencesparts=$APT/etc/preferences.d" -o "Dir::State=$APT"
          -o "Dir::State::lists=$APT/lists" -o "Dir::State::status=$APT/status" -o "Dir::Cache=$APT/cache"
          -o "APT::Architecture=arm64" -o "APT::Architectures=arm64" -o "APT::Sandbox::User=$(id -un)"
          -o "Dir::Etc::trustedparts=/etc/apt/trusted.gpg.d" -o "Debug::NoLocking=1")
echo "aarch64_sysroot: apt index of $MIRROR $SUITE (arm64)" >&2
apt-get -qq "${apt_opts[@]}" update || true     # a partial failure is judged by what arrived, below
if ! ls "$APT"/lists/*_Packages* >/dev/null 2>&1; then
  echo "aarch64_sysroot: could not fetch the arm64 package index from $MIRROR (no network?)" >&2
  exit 4
fi
# the dependency closure (Depends and Pre-Depends; virtual packages such as <debconf-2.0> dropped)
pkgs=$(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
         --no-breaks --no-replaces --no-enhances $DEBS | grep -E '^[a-z0-9]' | sort -u)
echo "aarch64_sysroot: downloading $(echo "$pkgs" | wc -w) arm64 packages" >&2
(cd "$APT/debs" && apt-get -qq "${apt_opts[@]}" download $pkgs)

ROOT="$CACHE/root.tmp"
rm -rf "$ROOT" && mkdir -p "$ROOT"
for deb in "$APT"/debs/*.deb; do
  dpkg-deb -x "$deb" "$ROOT"
done

# --- aarch64 wheels
SITE="$CACHE/site.tmp"
rm -rf "$SITE"
echo "aarch64_sysroot: aarch64 wheels: $WHEELS" >&2
# shellcheck disable=SC2086
$PIP install -q --target "$SITE" --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --python-version "$PYVER" --implementation cp --only-binary=:all: --no-warn-conflicts $WHEELS

# --- smoke test: the aarch64 CPython imports TVM's runtime under qemu
TVM_USE_RUNTIME_LIB=1 PYTHONPATH="$SITE" "$QEMU" -L "$ROOT" "$ROOT/usr/bin/python$PYVER" -c \
    "import platform, numpy, tvm; assert platform.machine() == 'aarch64', platform.machine()" \
    || { echo "aarch64_sysroot: the aarch64 python cannot import tvm under qemu" >&2; exit 3; }

rm -rf "$CACHE/root" "$CACHE/site"
mv "$ROOT" "$CACHE/root"
mv "$SITE" "$CACHE/site"
touch "$CACHE/.complete"
echo "$CACHE"
