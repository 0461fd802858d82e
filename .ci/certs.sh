#!/usr/bin/env bash
# Copy this machine's extra CA certificates (e.g. a TLS-intercepting proxy's) into the git-ignored
# build-context folder certs/, which the Dockerfile trusts. Certificates are per machine: never commit them.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p certs
shopt -s nullglob
for crt in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
  cp "$crt" certs/
done
ls certs >&2
