#!/usr/bin/env bash
# Real JPEG oddities for tests: Pillow's source distribution ships Tests/images with CMYK,
# progressive, EXIF-rotated, 16-bit-table and truncated JPEGs. Fetched from PyPI once, cached.
set -euo pipefail
cache="${VIGSP_CACHE:-$HOME/.cache/vigsp}"
dest="$cache/pillow-tests"
if [[ -f "$dest/.complete" ]]; then
  echo "Pillow test images already in $dest/images"
  exit 0
fi
python="${PYTHON:-python}"
version=$("$python" -c "import PIL; print(PIL.__version__)")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-build-isolation: otherwise pip builds the sdist's build requirements (CMake among
# them) from source just to read its metadata, which takes many minutes.
"$python" -m pip install --quiet setuptools wheel
"$python" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation "pillow==$version" -d "$tmp"
mkdir -p "$dest"
tar -xzf "$tmp"/pillow-*.tar.gz -C "$tmp"
rm -rf "$dest/images"
cp -r "$tmp"/pillow-*/Tests/images "$dest/images"
touch "$dest/.complete"
echo "Pillow $version test images in $dest/images ($(ls "$dest/images" | wc -l) files)"
