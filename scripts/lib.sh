# shellcheck shell=bash
# Set-up steps shared by scripts/setup.sh, scripts/serve.sh and scripts/test.sh.
#
# Source this file; it only defines variables and functions. kvserve_setup runs
# every step and leaves the model path in KV_MODEL_PATH. Each step checks
# before it acts, so a second run on a ready machine takes about a second.
# Progress goes to stderr so that callers may capture stdout.

KVSERVE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KVSERVE_BUILD_DIR=$KVSERVE_ROOT/build
: "${HOME:=$(cd ~ && pwd)}"

# Debian 12 packages needed to build, test and serve.
KVSERVE_APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  python3 python3-venv python3-pip unzip
  libabsl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
  protobuf-compiler libspdlog-dev nlohmann-json3-dev prometheus-cpp-dev
  libcpp-httplib-dev libgtest-dev libgmock-dev libbenchmark-dev
  # Chart.js, which the server's built-in /dashboard serves (no CDN).
  libjs-chart.js
)
# Only the test command needs these (scripts/test.sh adds them).
KVSERVE_APT_TEST_PACKAGES=(
  # promtool and the Prometheus server, for the rule checks and the live
  # scrape test (tests/deploy).
  prometheus
  # Headless Chromium, for the dashboard's browser test (tests/blackbox).
  chromium
)
# Extra packages kv_ensure_apt installs besides KVSERVE_APT_PACKAGES.
KV_APT_EXTRA=()

kv_log() { printf '[%s] %s\n' "${KV_LOG_TAG:-setup}" "$*" >&2; }
kv_die() {
  kv_log "error: $*"
  exit 1
}

kv_venv_dir() { printf '%s\n' "${KVSERVE_VENV:-$HOME/.cache/kvserve/venv}"; }

# Installs the packages of KVSERVE_APT_PACKAGES (and KV_APT_EXTRA) that dpkg does not report as
# installed; touches apt only when at least one is missing.
kv_ensure_apt() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    kv_log "dpkg-query not found (not Debian?): skipping system packages"
    return 0
  fi
  local pkg status
  local -a missing=()
  local -a wanted=("${KVSERVE_APT_PACKAGES[@]}" "${KV_APT_EXTRA[@]}")
  for pkg in "${wanted[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    kv_log "system packages: all ${#wanted[@]} installed"
    return 0
  fi
  local -a sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 ||
      kv_die "not root and no sudo; install as root: apt-get install ${missing[*]}"
    sudo=(sudo)
  fi
  kv_log "installing system packages: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 ||
    kv_die "apt-get update failed"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}" >&2 ||
    kv_die "apt-get install failed"
}

# True when every `name==version` line of requirements file $2 is installed
# in the environment of python $1. Any other kind of line makes it false, so
# that pip decides.
kv_requirements_met() {
  "$1" - "$2" <<'EOF' 2>/dev/null
import re
import sys
from importlib import metadata

for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
    if not m:
        sys.exit(1)
    try:
        if metadata.version(m.group(1)) != m.group(2):
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
EOF
}

# Creates the test venv with the system python and installs
# requirements-test.txt into it unless it is already satisfied.
kv_ensure_venv() {
  local venv req sys_py
  venv=$(kv_venv_dir)
  req=$KVSERVE_ROOT/requirements-test.txt
  sys_py=/usr/bin/python3
  [[ -x $sys_py ]] || sys_py=$(command -v python3) ||
    kv_die "python3 not found"
  if [[ -e $venv/bin/python ]] && ! "$venv/bin/python" -c '' 2>/dev/null; then
    # A venv whose interpreter went away (e.g. a system Python upgrade).
    [[ -f $venv/pyvenv.cfg ]] || kv_die "$venv is not a venv; set KVSERVE_VENV"
    kv_log "venv at $venv is broken: recreating it"
    rm -rf "$venv"
  fi
  if [[ ! -x $venv/bin/python ]]; then
    if [[ -d $venv && -n $(ls -A "$venv") && ! -f $venv/pyvenv.cfg ]]; then
      kv_die "$venv exists and is not a venv; set KVSERVE_VENV elsewhere"
    fi
    kv_log "creating venv at $venv"
    mkdir -p "$(dirname "$venv")"
    "$sys_py" -m venv "$venv" >&2 || kv_die "could not create venv at $venv"
  fi
  if kv_requirements_met "$venv/bin/python" "$req"; then
    kv_log "python test packages: up to date in $venv"
    return 0
  fi
  kv_log "installing python test packages from requirements-test.txt"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q \
    -r "$req" >&2 || kv_die "pip install -r $req failed"
}

# Configures build/ once, then builds incrementally.
kv_ensure_build() {
  local b=$KVSERVE_BUILD_DIR
  if [[ ! -f $b/build.ninja ]]; then
    if [[ -f $b/CMakeCache.txt ]] &&
      ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$b/CMakeCache.txt"; then
      kv_die "$b was configured with another generator; remove it and rerun"
    fi
    kv_log "configuring $b (Release, Ninja)"
    cmake -S "$KVSERVE_ROOT" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release >&2 ||
      kv_die "cmake configure failed"
  fi
  kv_log "building (cmake --build, -j$(nproc))"
  cmake --build "$b" -j"$(nproc)" >&2 || kv_die "build failed"
}

# Sets KV_MODEL_PATH: $KVSERVE_MODEL when set, else the verified cached copy
# that scripts/fetch_model.sh provides.
kv_ensure_model() {
  if [[ -n ${KVSERVE_MODEL:-} ]]; then
    [[ -f $KVSERVE_MODEL ]] ||
      kv_die "KVSERVE_MODEL=$KVSERVE_MODEL is not a file (unset it to fetch the default model)"
    KV_MODEL_PATH=$KVSERVE_MODEL
    kv_log "model: $KV_MODEL_PATH (from KVSERVE_MODEL)"
    return 0
  fi
  local out
  out=$("$KVSERVE_ROOT/scripts/fetch_model.sh") || kv_die "fetching the model failed"
  KV_MODEL_PATH=$(printf '%s\n' "$out" | tail -n 1)
  kv_log "model: $KV_MODEL_PATH"
}

kvserve_setup() {
  local start=$SECONDS
  kv_ensure_apt
  kv_ensure_venv
  kv_ensure_build
  kv_ensure_model
  kv_log "ready in $((SECONDS - start))s"
}
