#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh), then runs every test:
#   1. ctest on build/, one test at a time: labels unit, model and gpu (the
#      gpu tests skip, and are counted as skipped, where the CUDA runtime sees
#      no device);
#   2. the black-box Python tests in tests/blackbox, if there are any, with
#      the venv's pytest.
# Exits non-zero if any test failed. The tests see KVSERVE_MODEL (the model
# file) and KVSERVE_BIN (the kvserve binary).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KV_APT_EXTRA=("${KVSERVE_APT_TEST_PACKAGES[@]}")
kvserve_setup
KV_LOG_TAG="test"

export KVSERVE_MODEL=$KV_MODEL_PATH
export KVSERVE_BIN=$KVSERVE_BUILD_DIR/server/kvserve
cd "$KVSERVE_ROOT"

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT

passed=0
failed=0
skipped=0
counted=0

# --- ctest ---------------------------------------------------------------
kv_log "ctest"
ctest_rc=0
ctest --test-dir "$KVSERVE_BUILD_DIR" --output-on-failure -j1 2>&1 |
  tee "$log_dir/ctest.log" || ctest_rc=$?
ctest_summary="exit $ctest_rc"
# "N% tests passed, F tests failed out of T"; skipped tests count as passed
# there, so they are subtracted.
if line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' \
  "$log_dir/ctest.log" | tail -n 1); then
  read -r c_failed c_total < <(sed -E \
    's/^[0-9]+% tests passed, ([0-9]+) tests failed out of ([0-9]+).*/\1 \2/' \
    <<<"$line")
  c_skipped=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .*\*\*\*Skipped' \
    "$log_dir/ctest.log" || true)
  c_passed=$((c_total - c_failed - c_skipped))
  passed=$((passed + c_passed))
  failed=$((failed + c_failed))
  skipped=$((skipped + c_skipped))
  counted=1
  ctest_summary="$c_passed passed, $c_failed failed, $c_skipped skipped ($ctest_summary)"
elif grep -q 'No tests were found' "$log_dir/ctest.log"; then
  ctest_summary="no tests ($ctest_summary)"
fi

# --- pytest --------------------------------------------------------------
pytest_rc=0
pytest_summary="skipped: no tests/blackbox/test_*.py"
if [[ -d tests/blackbox ]] &&
  [[ -n $(find tests/blackbox -name 'test_*.py' -print -quit) ]]; then
  kv_log "pytest tests/blackbox tests/bench tests/deploy"
  "$(kv_venv_dir)/bin/python" -m pytest -q tests/blackbox tests/bench tests/deploy 2>&1 |
    tee "$log_dir/pytest.log" || pytest_rc=$?
  pytest_summary="exit $pytest_rc"
  if ((pytest_rc == 5)); then
    pytest_summary="no tests collected (exit 5, treated as success)"
    pytest_rc=0
  else
    # Last line of -q output, e.g. "3 failed, 10 passed, 1 skipped in 2.5s".
    last=$(grep -E '[0-9]+ (passed|failed|skipped|errors?)' \
      "$log_dir/pytest.log" | tail -n 1 || true)
    count_of() {
      grep -oE "[0-9]+ $1" <<<"$last" | head -n 1 | cut -d' ' -f1 || true
    }
    p_passed=$(count_of passed)
    p_failed=$(count_of failed)
    p_errors=$(count_of 'errors?')
    p_skipped=$(count_of skipped)
    p_failed=$((${p_failed:-0} + ${p_errors:-0}))
    if [[ -n $last ]]; then
      passed=$((passed + ${p_passed:-0}))
      failed=$((failed + p_failed))
      skipped=$((skipped + ${p_skipped:-0}))
      counted=1
      pytest_summary="${p_passed:-0} passed, $p_failed failed, ${p_skipped:-0} skipped ($pytest_summary)"
    fi
  fi
fi

# --- summary -------------------------------------------------------------
status=0
((ctest_rc == 0 && pytest_rc == 0)) || status=1
echo
kv_log "ctest:  $ctest_summary"
kv_log "pytest: $pytest_summary"
if ((status == 0)); then
  kv_log "result: OK"
else
  kv_log "result: FAILED"
fi
if ((counted)); then
  echo "total: $passed passed, $failed failed, $skipped skipped"
fi
exit "$status"
