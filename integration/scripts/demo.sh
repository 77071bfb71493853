#!/usr/bin/env bash
# Postern's main job, end to end, on a fresh machine:
#   1. installs Postfix and Dovecot if missing (install-deps.sh),
#   2. builds postern,
#   3. starts, in a temporary directory on loopback only, an organisation's
#      mail server (Postfix with STARTTLS and AUTH via Dovecot), Postern with
#      its embedded store, and an operator's Postfix carrying
#      contrib/postfix/main.cf and master.cf,
#   4. adds a project with `postern project add`, submits one message to the
#      operator's Postfix and waits for it to arrive,
#   5. prints where it arrived and its Received headers, and stops everything.
# Steps 2-5 are the Go program integration/cmd/demo, built on the same harness
# as the integration tests. Needs root (Postfix's and Dovecot's daemons switch
# users) and Go. Extra arguments go to the demo: -keep keeps the directory.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

step() { printf '==> %s\n' "$*"; }

if ((EUID != 0)); then
	echo "demo.sh: run as root: Postfix and Dovecot instances switch to their own users" >&2
	exit 1
fi
if ! command -v go >/dev/null 2>&1; then
	echo "demo.sh: Go is needed to build postern (see go.mod for the version)" >&2
	exit 1
fi

step "installing Postfix and Dovecot if missing"
integration/scripts/install-deps.sh

step "building postern"
bin_dir=$(mktemp -d)
trap 'rm -rf "$bin_dir"' EXIT
start=$(date +%s)
go build -o "$bin_dir/postern" ./sidecar/cmd/postern
step "built postern in $(($(date +%s) - start))s"

# The demo lives in the integration module (integration/go.mod): built there, run from here.
go build -C integration -o "$bin_dir/postern-demo" ./cmd/demo
step "running the demo (integration/cmd/demo)"
"$bin_dir/postern-demo" -postern "$bin_dir/postern" "$@"
