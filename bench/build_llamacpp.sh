#!/usr/bin/env bash
# Builds the speed/accuracy peer for bench/bench_vs_llamacpp.py: llama.cpp exactly as
# vendored in the llama-cpp-python 0.3.36 source distribution (the same llama.cpp that
# scripts/make_reference_fixtures.py uses through the Python binding), so the
# correctness fixtures and the speed comparison refer to one llama.cpp version.
#
# Everything lives OUTSIDE the repository:
#   $KVSERVE_PEER_DIR (default ~/.cache/kvserve/peer)/
#     sdist/    llama_cpp_python-0.3.36.tar.gz (from PyPI via `pip download`)
#     src/      the extracted sdist; llama.cpp is src/vendor/llama.cpp
#     build/    CMake Release build, GGML_NATIVE=ON, LLAMA_CURL=OFF
#     bin/      symlinks to the four built tools
#     VERSION   key=value lines: sdist version, llama.cpp commit (from the sdist's
#               CHANGELOG, since the sdist carries no .git, so the tools themselves
#               report build_commit "unknown"), compiler, build flags
#
# Idempotent: exits early when all tools and VERSION exist. Set KVSERVE_PEER_JOBS to
# change build parallelism (default 2: the dev machine has 2 cores shared by everyone).
set -euo pipefail

VERSION="0.3.36"
PEER_DIR="${KVSERVE_PEER_DIR:-$HOME/.cache/kvserve/peer}"
JOBS="${KVSERVE_PEER_JOBS:-2}"
TOOLS=(llama-bench llama-batched-bench llama-perplexity llama-server)

all_built() {
  [[ -f "$PEER_DIR/VERSION" ]] || return 1
  local t
  for t in "${TOOLS[@]}"; do
    [[ -x "$PEER_DIR/bin/$t" ]] || return 1
  done
  return 0
}

if all_built; then
  echo "build_llamacpp.sh: peer already built in $PEER_DIR (delete it to rebuild)"
  cat "$PEER_DIR/VERSION"
  exit 0
fi

mkdir -p "$PEER_DIR/sdist" "$PEER_DIR/bin"
TARBALL="$PEER_DIR/sdist/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$TARBALL" ]]; then
  python3 -m pip download --no-binary :all: --no-deps \
    -d "$PEER_DIR/sdist" "llama-cpp-python==$VERSION"
fi
[[ -f "$TARBALL" ]] || { echo "build_llamacpp.sh: $TARBALL missing after pip download" >&2; exit 1; }

SRC="$PEER_DIR/src"
LLAMA_SRC="$SRC/vendor/llama.cpp"
if [[ ! -f "$LLAMA_SRC/CMakeLists.txt" ]]; then
  rm -rf "$SRC" "$PEER_DIR/src.tmp"
  mkdir -p "$PEER_DIR/src.tmp"
  tar -xzf "$TARBALL" -C "$PEER_DIR/src.tmp"
  mv "$PEER_DIR/src.tmp/llama_cpp_python-$VERSION" "$SRC"
  rmdir "$PEER_DIR/src.tmp"
fi

# The sdist has no git metadata; its CHANGELOG names the vendored llama.cpp commit
# ("update llama.cpp to ggml-org/llama.cpp@<hash>") in the section for this version.
LLAMA_COMMIT="$(awk -v v="## [$VERSION]" '
  index($0, v) == 1 { on = 1; next }
  on && /^## \[/ { exit }
  on && match($0, /llama\.cpp@[0-9a-f]+/) { print substr($0, RSTART + 10, RLENGTH - 10); exit }
' "$SRC/CHANGELOG.md")"
LLAMA_COMMIT="${LLAMA_COMMIT:-unknown}"

GENERATOR=()
if command -v ninja > /dev/null; then GENERATOR=(-G Ninja); fi
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DGGML_NATIVE=ON
  -DLLAMA_CURL=OFF
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON
  # The dev machine has no network beyond PyPI/apt: no HTTPS client, no web UI
  # (neither built with npm nor fetched prebuilt). llama-server still serves its API.
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
)
cmake -S "$LLAMA_SRC" -B "$PEER_DIR/build" "${GENERATOR[@]}" "${CMAKE_FLAGS[@]}"
cmake --build "$PEER_DIR/build" --target "${TOOLS[@]}" -j "$JOBS"

for t in "${TOOLS[@]}"; do
  exe="$(find "$PEER_DIR/build" -type f -name "$t" -perm -u+x | head -n 1)"
  [[ -n "$exe" ]] || { echo "build_llamacpp.sh: built tool $t not found" >&2; exit 1; }
  ln -sfn "$exe" "$PEER_DIR/bin/$t"
done

{
  echo "llama_cpp_python_sdist=$VERSION"
  echo "llama_cpp_commit=$LLAMA_COMMIT"
  echo "sdist_sha256=$(sha256sum "$TARBALL" | cut -d' ' -f1)"
  echo "compiler=$(${CXX:-c++} --version | head -n 1)"
  echo "cmake_flags=${CMAKE_FLAGS[*]}"
  echo "targets=${TOOLS[*]}"
} > "$PEER_DIR/VERSION"
echo "build_llamacpp.sh: built ${TOOLS[*]} in $PEER_DIR/bin"
cat "$PEER_DIR/VERSION"
