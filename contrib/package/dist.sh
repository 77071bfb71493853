#!/usr/bin/env bash
# Builds what a release ships, under dist/ (make dist):
#   dist/postern-VERSION-linux-ARCH          static binaries (CGO_ENABLED=0), version stamped
#   dist/postern_VERSION_ARCH.deb            the Debian package (nfpm.yaml)
#   dist/SHA256SUMS
# Environment: GO (go), ARCHES ("amd64 arm64"), DIST (dist), VERSION (version.sh), REVISION (git).
# nfpm is installed at a pinned version into ~/.cache/postern (go install module@version), so it is
# no dependency of Postern's module; the first run downloads and builds it (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."

GO=${GO:-go}
NFPM_VERSION=v2.48.0
ARCHES=${ARCHES:-amd64 arm64}
DIST=${DIST:-dist}
VERSION=${VERSION:-$(sh contrib/package/version.sh)}
REVISION=${REVISION:-$(git rev-parse --short=12 HEAD 2>/dev/null || true)}
buildinfo=github.com/postern/postern/sidecar/buildinfo

mkdir -p "$DIST"
if [ -z "${NFPM:-}" ]; then
	NFPM="${XDG_CACHE_HOME:-$HOME/.cache}/postern/nfpm-$NFPM_VERSION/nfpm"
	if [ ! -x "$NFPM" ]; then
		echo "installing nfpm $NFPM_VERSION into $(dirname "$NFPM")" >&2
		GOBIN="$(dirname "$NFPM")" "$GO" install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION"
	fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for arch in $ARCHES; do
	bin="$DIST/postern-$VERSION-linux-$arch"
	CGO_ENABLED=0 GOOS=linux GOARCH="$arch" "$GO" build -trimpath \
		-ldflags "-s -w -X $buildinfo.version=$VERSION -X $buildinfo.revision=$REVISION" \
		-o "$bin" ./sidecar/cmd/postern
	# nfpm expands the environment in version and arch, not in file names: the binary's path is
	# written into a copy of the configuration. Debian versions start with a digit: no v.
	sed "s|\${BINARY}|$bin|" contrib/package/nfpm.yaml >"$work/nfpm.yaml"
	VERSION="${VERSION#v}" ARCH="$arch" \
		"$NFPM" package --config "$work/nfpm.yaml" --packager deb --target "$DIST/" >&2
done
(cd "$DIST" && rm -f SHA256SUMS && sha256sum -- * >SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
ls -l "$DIST"
