#!/usr/bin/env bash
# Debian packages for listening and looking (optional for training; the tests need them):
#   fluidsynth + fluid-soundfont-gm  render samples to audio (ms2dist sample --audio flac)
#   chromium                          headless browser for the listening-page and MLflow UI tests
# Installs only what is missing; needs root (or run the apt-get line yourself).
set -euo pipefail
need=()
command -v fluidsynth >/dev/null || need+=(fluidsynth)
[ -e /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need+=(fluid-soundfont-gm)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${need[*]}; run: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${need[@]}" >/tmp/ms2dist-apt.log 2>&1 || {
  apt-get update -q >>/tmp/ms2dist-apt.log 2>&1
  apt-get install -y -q --no-install-recommends "${need[@]}" >>/tmp/ms2dist-apt.log 2>&1 \
    || { echo "system-deps: apt-get install ${need[*]} failed, see /tmp/ms2dist-apt.log" >&2; exit 1; }
}
