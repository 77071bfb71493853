#!/bin/sh
# Prints the version to stamp into a build of Postern (see sidecar/buildinfo):
#   - on a release tag:          v0.9.0
#   - after one:                 v0.9.0-3-g0123abcd (git describe --tags --dirty), -dirty with local changes
#   - before the first tag:      v0.9.0-dev-g0123abcd, from the VERSION file and the commit
#   - outside a git checkout:    v0.9.0 from the VERSION file (a source tarball)
set -eu
cd "$(dirname "$0")/../.."
release=$(cat VERSION 2>/dev/null || echo 0.0.0)
if v=$(git describe --tags --always --dirty --match 'v[0-9]*' 2>/dev/null); then
	case $v in
	v[0-9]*) echo "$v" ;;
	*) echo "v$release-dev-g$v" ;;
	esac
else
	echo "v$release"
fi
