#!/usr/bin/env bash
# Policy scan (checkov, its own venv: .ci/requirements-policy.txt) of the Dockerfile, the Compose
# and Swarm stack files, and the Kubernetes manifests as kustomize renders them (base and GPU).
# Fails on any finding that is neither fixed nor skipped with a reason in .ci/checkov.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.ci/policy-venv
if ! "$venv/bin/checkov" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r .ci/requirements-policy.txt
fi
rendered=$(mktemp -d); trap 'rm -rf "$rendered"' EXIT
kubectl kustomize deploy/kubernetes > "$rendered/kubernetes.yaml"
kubectl kustomize deploy/kubernetes/gpu > "$rendered/kubernetes-gpu.yaml"
shopt -s nullglob
files=(Dockerfile compose*.yaml stack*.yaml "$rendered"/*.yaml)
"$venv/bin/checkov" --config-file .ci/checkov.yaml "${files[@]/#/--file=}"
