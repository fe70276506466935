# Dormant's image for Docker users: `docker build -t dormant:0.1.0 .` (the tag deploy/ names).
#
# The test suite does not use this file: it builds the same contents from Debian packages with
# mmdebstrap, without a base image or a registry (`make image`, scripts/build-image.sh), and
# runs it on a real node (tests/kube/realnode.py). Keep the two in step: bookworm's python3,
# Dormant with the `refserver` and `kube` extras in a venv at /opt/dormant, CRIU >= 4.2 (built from Debian's
# source package by scripts/setup-criu.sh: bookworm's own criu 3.17 cannot dump on kernels
# >= 6.12) with its runtime libraries.

FROM debian:bookworm AS criu
COPY scripts/setup-criu.sh scripts/debian-source.sh /src/scripts/
COPY scripts/criu-patches /src/scripts/criu-patches
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && DEPS=/build VENV=/opt/criu bash /src/scripts/setup-criu.sh \
    && install -m 0755 "$(readlink -f /opt/criu/bin/criu)" /criu

FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates iproute2 \
        libbsd0 libgnutls30 libnftables1 libprotobuf-c1 libnl-3-200 libnet1 libuuid1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=criu /criu /usr/local/sbin/criu
COPY pyproject.toml README.md /src/
COPY activator /src/activator
COPY warmpool /src/warmpool
COPY snapshots /src/snapshots
COPY deploy /src/deploy
COPY loadtests /src/loadtests
COPY examples /src/examples
# Where pip finds torch: PyPI's Linux torch pulls the CUDA libraries (gigabytes); pass a
# CPU-only wheel index with --build-arg PIP_EXTRA_INDEX_URL=... for a CPU image.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
RUN python3 -m venv /opt/dormant \
    && /opt/dormant/bin/pip install --no-cache-dir '/src[refserver,kube]' \
    && rm -rf /src
ENV PATH=/opt/dormant/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1
CMD ["dormant", "--help"]
