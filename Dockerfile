# kvserve server image, for the CPU (default) or for CUDA GPUs.
#
#   docker build -t kvserve .                                      # CPU, Debian 12
#   docker build --build-arg BACKEND=cuda -t kvserve:latest-cuda .  # CUDA
#   docker run --rm -p 8080:8080 -v ~/.cache/kvserve/models:/models:ro kvserve [serve flags]
#   docker run --rm --gpus all -p 8080:8080 -v ~/.cache/kvserve/models:/models:ro kvserve:latest-cuda
#
# The model is not baked in: mount the folder that scripts/fetch_model.sh
# fills (or any folder) at /models, or set KVSERVE_MODEL to another path.
#
# BACKEND=cuda builds on NVIDIA's CUDA images (devel to build, runtime to
# run; Ubuntu, as NVIDIA publishes them) and adds libkvserve_cuda.so, the
# module kvserve loads for --device cuda; the image then serves with
# --device cuda by default (KVSERVE_DEVICE). CUDA_VERSION picks the image
# tag; the host driver must support it (`nvidia-smi` shows the highest).

ARG BACKEND=cpu
ARG CUDA_VERSION=13.0.0
ARG CUDA_UBUNTU=ubuntu24.04

# ---- base images, one pair per backend -------------------------------------
FROM debian:12 AS build-base-cpu
FROM nvidia/cuda:${CUDA_VERSION}-devel-${CUDA_UBUNTU} AS build-base-cuda
FROM debian:12-slim AS runtime-base-cpu
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${CUDA_UBUNTU} AS runtime-base-cuda

# ---- build stage -----------------------------------------------------------
FROM build-base-${BACKEND} AS build
ARG BACKEND
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
# KVSERVE_CUDA=ON fails the build if the toolkit is missing rather than
# quietly making a CPU-only image.
RUN case "$BACKEND" in \
      cpu) cuda=OFF ;; \
      cuda) cuda=ON ;; \
      *) echo "BACKEND must be cpu or cuda, not '$BACKEND'" >&2; exit 1 ;; \
    esac \
 && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DKVSERVE_BUILD_TESTS=OFF -DKVSERVE_BUILD_BENCH=OFF -DKVSERVE_CUDA=$cuda \
 && cmake --build build -j"$(nproc)" \
 && mkdir -p /out/bin /out/lib/kvserve \
 && cp build/server/kvserve /out/bin/ \
 && if [ "$BACKEND" = cuda ]; then cp build/server/libkvserve_cuda.so /out/lib/kvserve/; fi

# The runtime stage installs exactly the packages that own the shared
# libraries the binary (and the CUDA module) link, so that list cannot drift
# from the build. With merged /usr, dpkg may record a library under /lib or
# /usr/lib, so both spellings are tried.
RUN set -eu; \
    : > /runtime-packages.txt; : > /unowned.txt; \
    for lib in $(ldd /out/bin/kvserve /out/lib/kvserve/*.so 2>/dev/null \
                 | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u); do \
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
FROM runtime-base-${BACKEND} AS runtime
ARG BACKEND
ENV DEBIAN_FRONTEND=noninteractive
COPY --from=build /runtime-packages.txt /tmp/runtime-packages.txt
# Only what the base image lacks is installed: the CUDA runtime image already
# holds the CUDA libraries (and NVIDIA holds their versions with apt-mark).
RUN set -eu; \
    missing=""; \
    for p in $(cat /tmp/runtime-packages.txt); do \
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing="$missing $p"; \
    done; \
    apt-get update; \
    apt-get install -y --no-install-recommends $missing ca-certificates curl libjs-chart.js; \
    rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/kvserve \
      --create-home --shell /usr/sbin/nologin kvserve
COPY --from=build /out/bin/kvserve /usr/local/bin/kvserve
# Empty for the CPU image. kvserve looks for the module in ../lib/kvserve
# beside its own directory.
COPY --from=build /out/lib/kvserve/ /usr/local/lib/kvserve/

ENV KVSERVE_MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf
ENV KVSERVE_DEVICE=${BACKEND}
VOLUME ["/models"]
USER kvserve
WORKDIR /var/lib/kvserve
# 8080: HTTP (OpenAI-style API, /metrics, /dashboard); 50051: gRPC.
EXPOSE 8080 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1

# Arguments given to `docker run` are appended as extra serve flags (e.g.
# --threads 4). --model, --device, --host and --port are set here: choose the
# model with KVSERVE_MODEL, the device with KVSERVE_DEVICE (cpu, cuda,
# cuda:N) and the published port with `-p`; the health check expects 8080.
ENTRYPOINT ["/bin/sh", "-c", "exec /usr/local/bin/kvserve serve --model \"$KVSERVE_MODEL\" --device \"$KVSERVE_DEVICE\" --host 0.0.0.0 --port 8080 \"$@\"", "kvserve"]
CMD []
