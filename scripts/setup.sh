#!/usr/bin/env bash
# Idempotent setup: virtualenv (.venv), Python packages, learn2learn 0.2.0 built for Python 3.11,
# the default dataset (Fashion-MNIST from Debian's dataset-fashion-mnist package) and, with
# --with-browser, Debian's chromium for the end-to-end browser test.
# A second run only checks a stamp and returns in seconds.
#
# Environment:
#   METAINF_VENV_CACHE  if set (CI), the virtualenv lives there, keyed by the requirements' hash,
#                       and .venv is a symlink to it, so a fresh clone reuses it.
#   PYTHON              interpreter to build the venv from (default: python3.11 or python3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
L2L_VERSION=0.2.0
# The virtualenv is keyed by what goes into it: requirements.txt and the learn2learn build recipe.
VENV_RECIPE="l2l-$L2L_VERSION-cython3-nobuildisolation-1"
KEY=$( (cat requirements.txt; echo "$VENV_RECIPE") | sha256sum | cut -c1-16)

log() { printf '[setup] %s\n' "$*" >&2; }

# ---- 1. virtualenv ------------------------------------------------------------------------
if [ -n "${METAINF_VENV_CACHE:-}" ]; then
  VENV="$METAINF_VENV_CACHE/venv-$KEY"
  mkdir -p "$METAINF_VENV_CACHE"
  if [ -e .venv ] && [ ! -L .venv ]; then rm -rf .venv; fi
  ln -sfn "$VENV" .venv
else
  VENV="$ROOT/.venv"
  if [ -L .venv ]; then rm .venv; fi
fi
STAMP="$VENV/.metainf-setup-$KEY"

if [ ! -f "$STAMP" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv at $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  log "installing requirements.txt (torch from the local wheel cache takes ~2 min)"
  "${PIP[@]}" install -r requirements.txt 2> >(grep -v -E "^WARNING: Location|is ignored" >&2)
  if ! "$VENV/bin/python" -c "import learn2learn" 2>/dev/null; then
    log "building learn2learn $L2L_VERSION from its sdist (regenerating Cython sources for Python 3.11)"
    TMP=$(mktemp -d)
    "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation "learn2learn==$L2L_VERSION" -d "$TMP" \
      2> >(grep -v -E "^WARNING: Location|is ignored" >&2)
    tar xzf "$TMP/learn2learn-$L2L_VERSION.tar.gz" -C "$TMP"
    SRC="$TMP/learn2learn-$L2L_VERSION"
    for f in meta_dataset task_dataset transforms; do
      "$VENV/bin/cython" -3 "$SRC/learn2learn/data/$f.pyx"
    done
    # qpth pins numpy<2 in its metadata but works with numpy 2; gsutil is only needed by downloaders.
    "${PIP[@]}" install --no-deps qpth==0.0.18 2> >(grep -v -E "^WARNING: Location|is ignored" >&2)
    "${PIP[@]}" install --no-build-isolation --no-deps "$SRC" 2> >(grep -v -E "^WARNING: Location|is ignored" >&2)
    rm -rf "$TMP"
  fi
  "$VENV/bin/python" -c "import torch, torchvision, learn2learn, streamlit, safetensors, xdist" 2>/dev/null
  touch "$STAMP"
  log "python environment ready"
fi

# ---- 2. default dataset: Fashion-MNIST in torchvision's raw layout ---------------------------
RAW="$ROOT/data/FashionMNIST/raw"
if [ ! -f "$RAW/t10k-labels-idx1-ubyte" ]; then
  mkdir -p "$RAW"
  SRC=/usr/share/datasets/fashion-mnist
  if [ ! -f "$SRC/t10k-labels-idx1-ubyte.gz" ]; then
    log "fetching Debian package dataset-fashion-mnist (no root needed)"
    TMP=$(mktemp -d)
    (cd "$TMP" && apt-get download dataset-fashion-mnist >/dev/null 2>&1) || {
      (apt-get update >/dev/null 2>&1 || true); (cd "$TMP" && apt-get download dataset-fashion-mnist >/dev/null); }
    dpkg-deb -x "$TMP"/dataset-fashion-mnist_*.deb "$TMP/x"
    SRC="$TMP/x/usr/share/datasets/fashion-mnist"
  fi
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    gunzip -c "$SRC/$f.gz" > "$RAW/$f.part" && mv "$RAW/$f.part" "$RAW/$f"
  done
  log "Fashion-MNIST ready in $RAW"
fi

# ---- 3. Debian chromium for tests/test_e2e_browser.py (make test passes --with-browser) -------
if [ "${1:-}" = "--with-browser" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    log "installing Debian's chromium for the end-to-end browser test (about a minute)"
    (apt-get update -qq >/dev/null 2>&1 || true)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
      || log "could not install chromium: the browser test will fail and say how to install it"
  else
    log "chromium is missing and this is not root: run 'sudo apt-get install chromium' for the browser test"
  fi
fi
