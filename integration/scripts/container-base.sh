#!/usr/bin/env bash
# Makes the base images the container scenarios build contrib/postfix/Dockerfile on, without a
# registry (none is reachable from these machines, so nothing is pulled):
#
#   localhost/debian:bookworm        Debian 12 from Debian's packages (debootstrap, minbase),
#                                    imported into the engine; the Dockerfile's DEBIAN_IMAGE
#   localhost/golang:<go>-bookworm   that image plus ca-certificates and this machine's Go
#                                    toolchain ($(go env GOROOT)); the Dockerfile's GO_IMAGE
#
# The engine is Docker when a Docker engine answers (`docker info`), Podman otherwise; Podman,
# runc, debootstrap and podman-compose are installed from Debian's packages when no engine answers
# and they are missing. The flags Podman needs on these machines are explained in
# integration/harness/engine.go (the same ones, in one place for the Go side).
#
# Cached: a stamp keyed by the Debian release, this script and the Go version, under
# ${POSTERN_CACHE:-$HOME/.cache/postern}/containers; the images are rebuilt when the stamp differs or
# an image is gone from the engine's store. Progress goes to stderr; stdout gets the build
# arguments, one per line, for `--build-arg`:
#   DEBIAN_IMAGE=localhost/debian:bookworm
#   GO_IMAGE=localhost/golang:1.26.8-bookworm
# Needs root (or sudo) to install packages and to run debootstrap.
set -euo pipefail

release=bookworm
mirror=${POSTERN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache_dir=${POSTERN_CACHE:-${HOME:-/root}/.cache/postern}/containers
stamp=$cache_dir/base.stamp
script=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

say() { printf 'container-base: %s\n' "$*" >&2; }

sudo=()
if ((EUID != 0)); then
	if command -v sudo >/dev/null 2>&1; then
		sudo=(sudo)
	else
		say "need root to install packages and run debootstrap" >&2
		exit 1
	fi
fi

installed() {
	[[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

# The engine: Docker only when its daemon answers (a docker CLI without an engine is common),
# else Podman, installed here when missing.
engine=()
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
	engine=(docker)
	need=(debootstrap)
else
	# Podman's defaults fail on these machines: crun refuses the hybrid cgroup layout (runc does
	# not), and there is no systemd to manage cgroups.
	engine=(podman --runtime runc --cgroup-manager=cgroupfs)
	need=(podman runc debootstrap podman-compose)
fi
missing=()
for p in "${need[@]}"; do
	installed "$p" || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
	say "installing ${missing[*]}"
	start=$(date +%s)
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get update -q >&2
	"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
	say "installed ${missing[*]} in $(($(date +%s) - start))s"
fi
say "engine: ${engine[*]}"

go_version=$(go env GOVERSION)
go_version=${go_version#go}
goroot=$(go env GOROOT)
debian_image=localhost/debian:$release
go_image=localhost/golang:$go_version-$release

exists() {
	if [[ ${engine[0]} == podman ]]; then
		"${engine[@]}" image exists "$1"
	else
		"${engine[@]}" image inspect "$1" >/dev/null 2>&1
	fi
}

key=$(
	{
		echo "$release $mirror"
		echo "${engine[0]}"
		go env GOVERSION GOARCH
		cat "$script"
	} | sha256sum | cut -d' ' -f1
)

mkdir -p "$cache_dir"
# Serialise concurrent callers (parallel test packages, CI and a developer).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$cache_dir/base.lock"
	flock 9
fi

if [[ -f $stamp && $(cat "$stamp") == "$key" ]] && exists "$debian_image" && exists "$go_image"; then
	say "up to date: $debian_image, $go_image"
	printf 'DEBIAN_IMAGE=%s\nGO_IMAGE=%s\n' "$debian_image" "$go_image"
	exit 0
fi
rm -f "$stamp"

start=$(date +%s)
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/postern-rootfs.XXXXXX")
trap '"${sudo[@]}" rm -rf "$rootfs"' EXIT
say "debootstrap --variant=minbase $release (about 80 s)"
"${sudo[@]}" debootstrap --variant=minbase "$release" "$rootfs" "$mirror" >&2
# What the image's apt-get needs and nothing else of this run: no cached packages, no logs.
"${sudo[@]}" rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*
"${sudo[@]}" tar -C "$rootfs" -c . | "${engine[@]}" import \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'CMD ["/bin/bash"]' - "$debian_image" >&2
say "imported $debian_image in $(($(date +%s) - start))s"

# The Go builder: what golang:<version>-bookworm offers the Dockerfile's build stage (Go on PATH,
# CA certificates for the module proxy, GOPATH /go), from this machine's toolchain. The machine's
# own CA certificates (/usr/local/share/ca-certificates) are trusted too: where egress passes an
# inspecting proxy, the module proxy is reached through it. The build context holds only the
# toolchain and those certificates.
start=$(date +%s)
context=$(mktemp -d "${TMPDIR:-/tmp}/postern-gobase.XXXXXX")
trap '"${sudo[@]}" rm -rf "$rootfs" "$context"' EXIT
cp -a "$goroot" "$context/go"
mkdir "$context/ca"
find /usr/local/share/ca-certificates -name '*.crt' -type f -exec cp {} "$context/ca/" \; 2>/dev/null || true
cat >"$context/Containerfile" <<EOF
FROM $debian_image
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY go /usr/local/go
ENV GOPATH=/go PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /go
EOF
build=("${engine[@]}" build --network host)
if [[ ${engine[0]} == podman ]]; then
	# The machine's open-files and process limits are below Podman's defaults.
	build+=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
fi
"${build[@]}" -f "$context/Containerfile" -t "$go_image" "$context" >&2
say "built $go_image in $(($(date +%s) - start))s"

echo "$key" >"$stamp"
printf 'DEBIAN_IMAGE=%s\nGO_IMAGE=%s\n' "$debian_image" "$go_image"
