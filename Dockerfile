# syntax=docker/dockerfile:1
#
# sipedge container image.
#   docker build -t sipedge .
#   docker run --rm --network host \
#     -v "$PWD/tls:/etc/sipedge/tls:ro" \
#     [-v "$PWD/sipedge.toml:/etc/sipedge/sipedge.toml:ro"] sipedge
#
# The default /etc/sipedge/sipedge.toml is configs/sipedge.example.toml with the
# listeners on 0.0.0.0 and the certificate expected at /etc/sipedge/tls/{cert,key}.pem
# (mount it; no key is ever baked into the image).  The metrics endpoint (and so the
# HEALTHCHECK's /healthz) lands with the operations issue.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sip/ sip/
COPY edge/ edge/
COPY media/ media/
# One wheel for sipedge (with the compiled media._srtp) plus wheels of its dependencies,
# so the runtime stage installs offline and needs no compiler.
RUN SIPEDGE_STRICT_BUILD=1 pip wheel --no-cache-dir --wheel-dir /wheels .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
# libssl3 carries the libcrypto.so.3 that media._srtp links.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/sipedge \
      --shell /usr/sbin/nologin sipedge
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels sipedge
COPY configs/sipedge.example.toml /etc/sipedge/sipedge.toml
# Only key lines change (comments keep documenting the real defaults).  The echo
# endpoint (port 5099) stays on loopback: it is a test aid, not a public service.
RUN sed -i -e '/^[a-z_]\+ = /{' \
      -e '/:5099"/!s/"127\.0\.0\.1:\([0-9]\+\)"/"0.0.0.0:\1"/' \
      -e 's|"\.sipedge/dev-cert\.pem"|"/etc/sipedge/tls/cert.pem"|' \
      -e 's|"\.sipedge/dev-key\.pem"|"/etc/sipedge/tls/key.pem"|' \
      -e '}' /etc/sipedge/sipedge.toml \
 && mkdir -p /etc/sipedge/tls
USER sipedge
WORKDIR /var/lib/sipedge
# SIP over UDP/TCP, SIP over TLS, SIP over secure WebSocket, metrics, RTP/SRTP relay ports.
EXPOSE 5060/udp 5060/tcp 5061/tcp 8443/tcp 2112/tcp 10000-60000/udp
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:2112/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]
ENTRYPOINT ["sipedge", "run", "--config", "/etc/sipedge/sipedge.toml"]
