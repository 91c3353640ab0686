#!/usr/bin/env bash
# Test assets of the data pipelines (tests/test_data*.py, tests/fixtures/datasets.py):
#   * Debian's dataset-fashion-mnist: the idx files in /usr/share/datasets/fashion-mnist (apt, as root);
#   * Pillow's Tests/images (CMYK, greyscale, EXIF, truncated and otherwise broken JPEGs) from the
#     Pillow sdist on PyPI, unpacked into $VIGSP_CACHE/pillow-tests/images (default ~/.cache/vigsp).
# Safe to run again: each part is skipped when already there.
set -euo pipefail

log() { printf '\033[1m[setup/data]\033[0m %s\n' "$*"; }

if [[ -d /usr/share/datasets/fashion-mnist ]]; then
  log "Fashion-MNIST already installed"
elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  log "apt-get install dataset-fashion-mnist"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null
else
  log "cannot install dataset-fashion-mnist (needs root and apt-get): run as root: apt-get install dataset-fashion-mnist" >&2
  exit 1
fi

cache="${VIGSP_CACHE:-$HOME/.cache/vigsp}"
dest="$cache/pillow-tests"
if [[ -f "$dest/.complete" ]]; then
  log "Pillow test images already in $dest/images"
  exit 0
fi
python="${PYTHON:-python3}"
# The installed Pillow's own test images: its sdist on PyPI holds them.
version=$("$python" -c "import PIL; print(PIL.__version__)")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-binary pillow (not :all:): pip reads the sdist's metadata by running its build backend;
# with :all: it would first compile that backend's requirements (CMake among them) from source.
log "pip download pillow==$version (sdist)"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary pillow "pillow==$version" -d "$tmp"
tar -xzf "$tmp"/pillow-*.tar.gz -C "$tmp" --wildcards '*/Tests/images/*'
mkdir -p "$dest"
rm -rf "$dest/images"
mv "$tmp"/pillow-*/Tests/images "$dest/images"
touch "$dest/.complete"
log "Pillow $version test images in $dest/images ($(find "$dest/images" -type f | wc -l) files)"
