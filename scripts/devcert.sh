#!/usr/bin/env bash
# A self-signed development certificate for the TLS listeners, if not already there.
#
# Usage: scripts/devcert.sh [DIR]     (default DIR=.sipedge)
# Writes DIR/dev-cert.pem and DIR/dev-key.pem (mode 0600): ECDSA P-256, valid one year,
# subjectAltName IP:127.0.0.1 and DNS:localhost.  For development and tests only.
set -euo pipefail

dir=${1:-.sipedge}
cert="$dir/dev-cert.pem"
key="$dir/dev-key.pem"

if [ -s "$cert" ] && [ -s "$key" ]; then
    exit 0
fi

mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.devcert.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(
    umask 077
    openssl req -x509 -new -nodes \
        -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$tmp/dev-key.pem" -out "$tmp/dev-cert.pem" \
        -days 365 -sha256 \
        -subj "/O=sipedge development/CN=localhost" \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -addext "basicConstraints=critical,CA:FALSE" \
        -addext "keyUsage=critical,digitalSignature" \
        -addext "extendedKeyUsage=serverAuth,clientAuth"
)
chmod 0600 "$tmp/dev-key.pem"
chmod 0644 "$tmp/dev-cert.pem"
# Key first, so a cert never exists without its key.
mv "$tmp/dev-key.pem" "$key"
mv "$tmp/dev-cert.pem" "$cert"
echo "devcert: wrote $cert and $key" >&2
