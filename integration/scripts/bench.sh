#!/usr/bin/env bash
# `make bench`: Postern measured against Postfix relaying directly, in one run, on this machine.
#   1. builds postern,
#   2. runs the Go benchmarks of the hot path (route lookup, the token broker's cache hit, an
#      upstream delivery pooled and on a new connection, an LMTP delivery through smtpd) with
#      -benchmem -count 5, saved for benchstat as $out/go-bench.txt, and a CPU profile of the
#      LMTP delivery ($out/profile-lmtp-delivery.txt),
#   3. runs integration/bench/cmd/postern-bench: real Postfix fed by Postfix's smtp-source,
#      Postern, Postfix's own SMTP client (with and without its TLS session cache) and its plain
#      relay into a fast Go sink; XOAUTH2 with a real OAuth 2.0 server; 10,000 projects (in the
#      file store, and in Vault when the Vault dev server is built) and 100,000 in the file store; CPU
#      profiles of Postern itself under load (debug.pprof). It prints the table and writes $out/results.json, $out/chart.png and
#      $out/postern-cpu-{1KB,100KB}.pprof (summarised in .txt beside them).
# Needs root, Go, and what `make bench-deps` installs (Postfix with smtp-source; the OAuth
# server's npm packages), which `make bench` runs first. Not part of `make test`. Environment:
#   BENCH_OUT        output directory (default bench-results)
#   BENCH_GOTIME     -benchtime of each Go benchmark run (default 300ms)
#   BENCH_ARGS       extra arguments for postern-bench (e.g. "-rounds 1 -projects -1")
#   BENCH=quick      a run under 5 minutes: one round at concurrency 10, no XOAUTH2 and no scale
#                    cells, the distant cells at 0 and 30 ms with 1 and 1,000 projects (3 messages
#                    per mailbox), and the Go benchmarks once
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

out=${BENCH_OUT:-bench-results}
gotime=${BENCH_GOTIME:-300ms}
gocount=5
quick_args=(-large-projects 100000)
if [[ ${BENCH:-} == quick ]]; then
	gotime=${BENCH_GOTIME:-100ms}
	gocount=1
	quick_args=(-rounds 1 -steps 10 -projects -1 -no-xoauth2 -rtts 0,30 -distant-projects 1,1000 -distant-per-mailbox 3)
fi
step() { printf '==> [%4ds] %s\n' "$(($(date +%s) - start))" "$*"; }
start=$(date +%s)

if ((EUID != 0)); then
	echo "bench.sh: run as root: the Postfix instances switch to the postfix user" >&2
	exit 1
fi
if ! command -v go >/dev/null 2>&1; then
	echo "bench.sh: Go is needed (see go.mod for the version)" >&2
	exit 1
fi
if ! PATH=$PATH:/usr/sbin command -v smtp-source >/dev/null 2>&1; then
	echo "bench.sh: smtp-source (package postfix) is missing: run make bench-deps" >&2
	exit 1
fi
if [[ ! -d integration/oauth/idp/node_modules/oidc-provider ]]; then
	echo "bench.sh: the OAuth server is not installed: run make bench-deps" >&2
	exit 1
fi
mkdir -p "$out"

step "building postern"
bin_dir=$(mktemp -d)
trap 'rm -rf "$bin_dir"' EXIT
go build -o "$bin_dir/postern" ./sidecar/cmd/postern
go build -C integration -o "$bin_dir/postern-bench" ./bench/cmd/postern-bench

pkgs=(./sidecar/route ./sidecar/token ./sidecar/upstream ./sidecar/smtpd)
step "Go benchmarks (-benchmem -count $gocount -benchtime $gotime) > $out/go-bench.txt"
go test -run '^$' -bench . -benchmem -count "$gocount" -benchtime "$gotime" "${pkgs[@]}" | tee "$out/go-bench.txt"

go test -c -o "$bin_dir/smtpd.test" ./sidecar/smtpd
for size in 1KB 100KB; do
	step "CPU and allocation profiles of one LMTP delivery ($size) > $out/profile-lmtp-delivery-$size.{cpu,allocs}.txt"
	"$bin_dir/smtpd.test" -test.run '^$' -test.bench "LMTPDelivery/$size" -test.benchtime 1000x \
		-test.cpuprofile "$out/lmtp-delivery-$size.cpu.pprof" -test.memprofile "$out/lmtp-delivery-$size.allocs.pprof" >/dev/null
	go tool pprof -top -nodecount=25 "$bin_dir/smtpd.test" "$out/lmtp-delivery-$size.cpu.pprof" >"$out/profile-lmtp-delivery-$size.cpu.txt" 2>/dev/null
	go tool pprof -top -nodecount=25 -sample_index=alloc_objects "$bin_dir/smtpd.test" "$out/lmtp-delivery-$size.allocs.pprof" >"$out/profile-lmtp-delivery-$size.allocs.txt" 2>/dev/null
	sed -n '6,14p' "$out/profile-lmtp-delivery-$size.cpu.txt"
done

# Path A keeps its projects in Vault when the Vault dev server is already built (make deps, make
# test); building it takes minutes, so without it the store is the embedded file store.
vault_args=()
if vaultdev=$(bash integration/vaultdev/build.sh --check 2>/dev/null); then
	export POSTERN_VAULTDEV=$vaultdev
	vault_args=(-vault)
fi

step "end to end with real Postfix (postern-bench${vault_args:+, store: Vault})"
# shellcheck disable=SC2086 # BENCH_ARGS is split on purpose
"$bin_dir/postern-bench" -postern "$bin_dir/postern" -out "$out" -go-bench "$out/go-bench.txt" "${vault_args[@]}" "${quick_args[@]}" ${BENCH_ARGS:-}

for prof in "$out"/postern-cpu-*.pprof; do
	[[ -e $prof ]] || continue
	step "Postern's CPU profile under load: ${prof%.pprof}.txt"
	go tool pprof -top -nodecount=30 "$bin_dir/postern" "$prof" >"${prof%.pprof}.txt" 2>/dev/null
	sed -n '4,16p' "${prof%.pprof}.txt"
done

step "done in $(($(date +%s) - start))s: $out/results.json, $out/chart.png, $out/go-bench.txt"
