#!/usr/bin/env bash
# nsa-tune set-up: installs what the build needs (Debian 12 + the CUDA toolkit in /usr/local/cuda),
# builds, and then either runs the daemon or the tests.
#
#   ./setup.sh run     install, build, run nsa-tuned in the foreground on ./state (socket + SQLite)
#   ./setup.sh test    install, build, run every test (GPU tests skip without a GPU)
#   ./setup.sh build   install and build only
#   ./setup.sh dist    build and install into ./dist (what is carried to a GPU host)
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
build=${NSA_BUILD_DIR:-$here/build}
jobs=${NSA_JOBS:-$(nproc)}

need_pkgs=(cmake g++ make python3 libboost-dev nlohmann-json3-dev libsqlite3-dev sqlite3 libgtest-dev libcli11-dev)

install_deps() {
  local missing=()
  for p in "${need_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    local sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [[ ! -f /usr/local/cuda/include/nvrtc.h ]]; then
    echo "setup: the CUDA toolkit is missing: install CUDA 13 into /usr/local/cuda (NVRTC and cuda.h are needed; a GPU is not)" >&2
    exit 1
  fi
}

build() {
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=${NSA_BUILD_TYPE:-RelWithDebInfo} >/dev/null
  cmake --build "$build" -j "$jobs"
}

case "${1:-}" in
  run)
    install_deps; build
    mkdir -p "$here/state"
    exec "$build/service/nsa-tuned" --state-dir "$here/state" --socket "$here/state/nsa-tuned.sock" "${@:2}"
    ;;
  test)
    install_deps; build
    cd "$build" && ctest --output-on-failure -j "$jobs" "${@:2}"
    ;;
  build)
    install_deps; build
    ;;
  dist)
    install_deps; build
    cmake --install "$build" --prefix "$here/dist" --strip >/dev/null
    echo "installed into $here/dist"
    ;;
  *)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
