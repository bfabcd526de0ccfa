#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh), then runs the server in the
# foreground:
#   ./scripts/serve.sh [kvserve serve flags]
# --model, --host and --port default to the cached model, 127.0.0.1 and 8080
# unless given. Relative paths in the flags are taken from the directory the
# script was started in.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_dir=$PWD
kvserve_setup

# True when flag $1 is among the remaining arguments, as `--x v` or `--x=v`.
has_flag() {
  local flag=$1 arg
  shift
  for arg in "$@"; do
    [[ $arg == "$flag" || $arg == "$flag="* ]] && return 0
  done
  return 1
}

defaults=()
has_flag --model "$@" || defaults+=(--model "$KV_MODEL_PATH")
has_flag --host "$@" || defaults+=(--host 127.0.0.1)
has_flag --port "$@" || defaults+=(--port 8080)

bin=$KVSERVE_BUILD_DIR/server/kvserve
[[ -x $bin ]] || kv_die "the build did not produce $bin"
cd "$start_dir"
KV_LOG_TAG=serve kv_log "exec $bin serve ${defaults[*]} $*"
exec "$bin" serve "${defaults[@]}" "$@"
