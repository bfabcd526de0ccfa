#!/usr/bin/env bash
# Makes this checkout ready to serve and test: installs missing Debian
# packages, creates the Python test venv, builds build/ incrementally and
# fetches the model. Prints the model path as the last line of stdout.
# Safe to rerun; it does nothing that is already done.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kvserve_setup
printf '%s\n' "$KV_MODEL_PATH"
