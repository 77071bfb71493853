#!/usr/bin/env bash
# Installs what the XOAUTH2 integration tests need, and nothing that is already there:
#   1. Dovecot (dovecot-core, dovecot-submissiond) from Debian, when missing.
#   2. The test authorization server's npm packages (npm ci in idp/), when node_modules is missing
#      or package-lock.json changed since the last install.
#   3. With --chromium: Debian's chromium, for the sign-in page tests.
# Run as root on Debian 12. Safe to run again.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
with_chromium=0
for arg in "$@"; do
	case "$arg" in
	--chromium) with_chromium=1 ;;
	*)
		echo "usage: $0 [--chromium]" >&2
		exit 2
		;;
	esac
done

apt_packages=(dovecot-core dovecot-submissiond)
if [ "$with_chromium" = 1 ]; then
	apt_packages+=(chromium)
fi

missing=()
for p in "${apt_packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "oauth install: apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# Installing dovecot-core would start the system service (IMAP on every interface) where no
	# policy forbids it; the tests run private instances, so forbid it for this install.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# A system Dovecot started by the package would hold ports and is not used by the tests.
if [ -s /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
	echo "oauth install: note: a system dovecot is running (pid $(cat /run/dovecot/master.pid)); tests use private instances"
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	echo "oauth install: node and npm are required (Node.js 20.19 or later)" >&2
	exit 1
fi

idp="$here/idp"
stamp="$idp/node_modules/.postern-lock-sha256"
want="$(sha256sum "$idp/package-lock.json" | cut -d' ' -f1)"
if [ ! -d "$idp/node_modules/oidc-provider" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
	echo "oauth install: npm ci in $idp"
	(cd "$idp" && npm ci --no-audit --no-fund --loglevel=error)
	echo "$want" >"$stamp"
fi

echo "oauth install: dovecot $(dovecot --version 2>/dev/null | cut -d' ' -f1), node $(node --version), oidc-provider $(node -p "require('$idp/node_modules/oidc-provider/package.json').version")"

# A freshly installed Chromium has been seen to fail its very first page load; load one page now,
# so that the sign-in tests meet a Chromium that has started before.
if [ "$with_chromium" = 1 ]; then
	profile="$(mktemp -d)"
	if timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
		--disable-background-networking --disable-component-update --disable-sync \
		--user-data-dir="$profile" --dump-dom about:blank >/dev/null 2>&1; then
		echo "oauth install: chromium $(chromium --version 2>/dev/null | awk '{print $2}') starts headless"
	else
		echo "oauth install: warning: chromium's first headless start failed; the sign-in tests will start it again" >&2
	fi
	rm -rf "$profile"
fi
