#!/usr/bin/env bash
# Builds the Vault dev server (vaultdev) into a cache directory, only when its
# source, go.mod/go.sum or the Go toolchain changed since the last build.
# Progress goes to stderr; the binary's path is printed on stdout, so:
#   VAULTDEV=$(integration/vaultdev/build.sh)
# Output path: ${POSTERN_CACHE:-$HOME/.cache/postern}/bin/vaultdev
# With --check it builds nothing: it prints the path and exits 0 if the binary is up to date,
# and exits 1 otherwise.
set -euo pipefail

check_only=false
if [[ ${1:-} == --check ]]; then
	check_only=true
fi

src_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_dir=${POSTERN_CACHE:-${HOME:-/root}/.cache/postern}
bin_dir=$cache_dir/bin
out=$bin_dir/vaultdev
stamp=$out.stamp

mkdir -p "$bin_dir"

# This is a nested module with its own go.mod; never let a go.work elsewhere
# pull it into a workspace.
export GOWORK=off

# Serialise concurrent callers (e.g. parallel test packages).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$out.lock"
	flock 9
fi

hash=$(
	cd "$src_dir"
	{
		go version
		go env GOOS GOARCH CGO_ENABLED
		for f in build.sh go.mod go.sum $(ls ./*.go | LC_ALL=C sort); do
			printf '== %s\n' "$f"
			cat "$f"
		done
	} | sha256sum | cut -d' ' -f1
)

if [[ -x $out && -f $stamp && $(cat "$stamp") == "$hash" ]]; then
	echo "vaultdev: up to date ($out)" >&2
	echo "$out"
	exit 0
fi
if $check_only; then
	echo "vaultdev: not built, or out of date ($out)" >&2
	exit 1
fi

echo "building Vault dev server (first build takes several minutes)..." >&2
start=$(date +%s)
tmp=$(mktemp "$bin_dir/.vaultdev.XXXXXX")
trap 'rm -f "$tmp"' EXIT
(
	cd "$src_dir"
	go build -trimpath -ldflags='-s -w' -o "$tmp" .
)
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "$hash" >"$stamp"
echo "built Vault dev server in $(($(date +%s) - start))s: $out" >&2
echo "$out"
