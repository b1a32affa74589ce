# syntax=docker/dockerfile:1
#
# sipedge container image (docs/operations.md has the whole story).
#   docker build -t sipedge .
#   docker run --rm --network host \
#     -v "$PWD/tls:/etc/sipedge/tls:ro" \
#     [-v "$PWD/sipedge.toml:/etc/sipedge/sipedge.toml:ro"] \
#     [-e JWT_KEY=... -e SIPEDGE_TLS_CERT_BASE64=... -e SIPEDGE_TLS_KEY_BASE64=...] sipedge
#
# Host networking, not -p: the media relay uses one UDP port pair per call leg out of
# [media] port_range (10000-60000 by default).  Publishing 50,000 ports with -p makes
# Docker start a proxy process or NAT rule per port (minutes to start, and RTP loses
# its source address); with --network host the relay binds the host's ports itself.
#
# The default /etc/sipedge/sipedge.toml is configs/sipedge.example.toml with the
# listeners and the metrics endpoint on 0.0.0.0 and the certificate expected at
# /etc/sipedge/tls/{cert,key}.pem (mount it, or pass it base64 in the environment;
# no key is ever baked into the image).  Mount your own file over it for production:
# at least [listen] advertise, [media] address and your [upstream] sets.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
# A C compiler and OpenSSL's headers for media._srtp (the SRTP hot path).
# Unpinned on purpose: the bookworm point release brings the security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
# Everything sipedge needs at run time goes into one venv, copied whole to the
# runtime stage: no compiler, headers or pip caches there.
RUN python -m venv /opt/sipedge
ENV PATH=/opt/sipedge/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sip/ sip/
COPY edge/ edge/
COPY media/ media/
# SIPEDGE_STRICT_BUILD: compiler warnings are errors, as in `make` (the compiler is
# the image's, so no new warning can surprise the build).  Dependencies float within
# pyproject.toml's bounds, like any pip install.
# hadolint ignore=DL3013
# -I: import the installed package, not the source tree in the working directory.
RUN SIPEDGE_STRICT_BUILD=1 pip install --no-cache-dir . \
 && python -I -c "import media._srtp"
# The mypyc-compiled signalling hot path (sip/_compiled.py), built by a throwaway
# venv so that mypy stays out of the image; used while its sources match.
# --no-pgo: the profile-guided build's training run (scripts/pgo_train.py) proxies
# calls through the source tree's bench driver, which this stage does not have;
# the image's core is built in one pass, without a profile.
COPY scripts/build_compiled.py scripts/
ENV SIPEDGE_COMPILED_DIR=/opt/sipedge/compiled
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir "mypy>=1.10,<3" "setuptools>=69" \
 && /opt/build/bin/python scripts/build_compiled.py --no-pgo \
 && rm -rf /opt/build \
 && python -I -c "from sip import _compiled; ok, why = _compiled.status(); assert ok, why"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
# libssl3 carries the libcrypto.so.3 that media._srtp links.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/sipedge \
      --shell /usr/sbin/nologin sipedge
COPY --from=builder /opt/sipedge /opt/sipedge
ENV PATH=/opt/sipedge/bin:$PATH \
    SIPEDGE_COMPILED_DIR=/opt/sipedge/compiled \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY configs/sipedge.example.toml /etc/sipedge/sipedge.toml
# Only key lines change (comments keep documenting the real defaults).  The echo
# endpoint (port 5099) stays on loopback: it is a test aid, not a public service.
RUN sed -i -e '/^[a-z_]\+ = /{' \
      -e '/:5099"/!s/"127\.0\.0\.1:\([0-9]\+\)"/"0.0.0.0:\1"/' \
      -e 's|"\.sipedge/dev-cert\.pem"|"/etc/sipedge/tls/cert.pem"|' \
      -e 's|"\.sipedge/dev-key\.pem"|"/etc/sipedge/tls/key.pem"|' \
      -e '}' /etc/sipedge/sipedge.toml \
 && mkdir -p /etc/sipedge/tls \
 && install -d -o sipedge -g sipedge -m 0700 /var/lib/sipedge/.sipedge
# A numeric user, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# State (credentials database, control socket) in /var/lib/sipedge/.sipedge: the
# config's relative paths are relative to this directory.
WORKDIR /var/lib/sipedge
# SIP over UDP/TCP, SIP over TLS, SIP over secure WebSocket, metrics and health,
# RTP/SRTP relay ports (see above: use host networking for those).
EXPOSE 5060/udp 5060/tcp 5061/tcp 8443/tcp 2112/tcp 10000-60000/udp
# /healthz on the metrics port; the slim image has no curl, Python does it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:2112/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]
ENTRYPOINT ["sipedge", "run", "--config", "/etc/sipedge/sipedge.toml"]
