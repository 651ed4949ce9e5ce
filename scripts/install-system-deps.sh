#!/usr/bin/env bash
# Installs every Debian package the project needs, idempotently: build tools for the
# native extension, the TTS engines and voices, and the text and speech data packages.
# contrib/non-free come through a private apt config, so the system's sources stay untouched.
# Packages that must not be installed (their dependencies are heavy or unsatisfiable) are
# only downloaded and unpacked into $PIPELINE_CACHE/debs.
set -euo pipefail

CACHE="${PIPELINE_CACHE:-$HOME/.cache/asr-pipeline}"
BUILD_PKGS="build-essential cmake g++-aarch64-linux-gnu qemu-user openssh-client openssh-server clang-14 libclang-rt-14-dev"
TTS_PKGS="espeak-ng mbrola mbrola-us1 mbrola-en1 festival festlex-cmu festlex-poslex festlex-oald
  festvox-kallpc16k festvox-kdlpc16k festvox-rablpc16k festvox-don festvox-us1 festvox-en1
  flite libttspico-utils rhvoice rhvoice-english"
DATA_PKGS="pocketsphinx pocketsphinx-en-us bible-kjv bible-kjv-text fortunes fortunes-min wordnet-base asterisk-core-sounds-en-wav asterisk-core-sounds-en"
UNPACK_PKGS="uqm-voice uqm-content r-cran-janeaustenr"

die() { echo "install-system-deps: $*" >&2; exit 1; }

missing=()
for p in $BUILD_PKGS $TTS_PKGS $DATA_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
python3 -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null \
  || missing+=(python3-dev)
unpacked=()
for p in $UNPACK_PKGS; do [ -f "$CACHE/debs/$p.done" ] || unpacked+=("$p"); done

if [ ${#missing[@]} -eq 0 ] && [ ${#unpacked[@]} -eq 0 ]; then
  echo "install-system-deps: everything is already installed"; exit 0
fi
[ "$(id -u)" = 0 ] || SUDO=sudo
command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian 12 (bookworm)"
SUDO="${SUDO:-}"
if [ -n "$SUDO" ] && ! command -v sudo >/dev/null; then die "not root and no sudo: run as root to install ${missing[*]} ${unpacked[*]}"; fi

# A private sources list with contrib and non-free, in its own state dir.
APT_DIR="$CACHE/apt"
mkdir -p "$APT_DIR/lists/partial"
cat > "$APT_DIR/sources.list" <<SRC
deb http://deb.debian.org/debian bookworm main contrib non-free
deb http://deb.debian.org/debian bookworm-updates main contrib non-free
SRC
APT_OPTS=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$APT_DIR/lists" -o APT::Get::Assume-Yes=true -q
          -o APT::Sandbox::User=root)
$SUDO apt-get "${APT_OPTS[@]}" update >/dev/null || die "apt-get update failed (no network to the Debian mirror?)"

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-system-deps: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${APT_OPTS[@]}" install --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install failed for: ${missing[*]}"
fi
for p in "${unpacked[@]}"; do
  echo "install-system-deps: unpacking $p into $CACHE/debs"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get "${APT_OPTS[@]}" download "$p" >/dev/null) || die "apt-get download $p failed"
  mkdir -p "$CACHE/debs/root"
  dpkg -x "$tmp"/*.deb "$CACHE/debs/root"
  rm -rf "$tmp"
  touch "$CACHE/debs/$p.done"
done
echo "install-system-deps: done"
