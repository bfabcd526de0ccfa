# kvserve server image.
#
#   docker build -t kvserve .
#   docker run --rm -p 8080:8080 -v ~/.cache/kvserve/models:/models:ro kvserve [serve flags]
#
# The model is not baked in: mount the folder that scripts/fetch_model.sh
# fills (or any folder) at /models, or set KVSERVE_MODEL to another path.

# ---- build stage -----------------------------------------------------------
FROM debian:12 AS build
ENV DEBIAN_FRONTEND=noninteractive
# The C++ subset of KVSERVE_APT_PACKAGES in scripts/lib.sh (the Python test
# packages are not needed to build the server).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config git ca-certificates \
      libabsl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev \
      protobuf-compiler libspdlog-dev nlohmann-json3-dev prometheus-cpp-dev \
      libcpp-httplib-dev libgtest-dev libgmock-dev libbenchmark-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DKVSERVE_BUILD_TESTS=OFF -DKVSERVE_BUILD_BENCH=OFF \
 && cmake --build build -j"$(nproc)" \
 && test -x build/server/kvserve

# The runtime stage installs exactly the Debian packages that own the shared
# libraries the binary links, so that list cannot drift from the build. With
# merged /usr, dpkg may record a library under /lib or /usr/lib, so both
# spellings are tried.
RUN set -eu; \
    : > /runtime-packages.txt; : > /unowned.txt; \
    for lib in $(ldd build/server/kvserve | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'); do \
      real=$(readlink -f "$lib"); \
      owner=$({ dpkg -S "$lib" || dpkg -S "$real" || dpkg -S "${real#/usr}"; } 2>/dev/null \
        | head -n 1 | cut -d: -f1); \
      if [ -n "$owner" ]; then echo "$owner" >> /runtime-packages.txt; \
      else echo "$lib" >> /unowned.txt; fi; \
    done; \
    if [ -s /unowned.txt ]; then echo "no package owns:"; cat /unowned.txt; exit 1; fi; \
    sort -u -o /runtime-packages.txt /runtime-packages.txt; \
    cat /runtime-packages.txt

# ---- runtime stage ---------------------------------------------------------
FROM debian:12-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
COPY --from=build /runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
      ca-certificates curl libjs-chart.js \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/kvserve \
      --create-home --shell /usr/sbin/nologin kvserve
COPY --from=build /src/build/server/kvserve /usr/local/bin/kvserve

ENV KVSERVE_MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf
VOLUME ["/models"]
USER kvserve
WORKDIR /var/lib/kvserve
# 8080: HTTP (/health today; the OpenAI-style API and /metrics are planned).
# 50051: gRPC (planned).
EXPOSE 8080 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1

# Arguments given to `docker run` are appended as extra serve flags (e.g.
# --threads 4). --model, --host and --port are set here: choose the model with
# KVSERVE_MODEL and the published port with `-p`; the health check expects 8080.
ENTRYPOINT ["/bin/sh", "-c", "exec /usr/local/bin/kvserve serve --model \"$KVSERVE_MODEL\" --host 0.0.0.0 --port 8080 \"$@\"", "kvserve"]
CMD []
