#!/usr/bin/env bash
# Installs what Postern's real-parts tests and demo need, from Debian's packages:
#   postfix              the front and upstream mail servers (private instances)
#   dovecot-core         SASL authentication for the upstream Postfix
#   dovecot-submissiond  Dovecot's submission server (XOAUTH2 upstream tests)
#   openssl, ca-certificates, ssl-cert
#                        TLS tooling used by Postfix and Dovecot's package scripts
#   libsasl2-modules     the SASL PLAIN client Postfix's SMTP client signs in with
#                        (make bench: Postfix relaying through an authenticating server)
# Idempotent: installs only what is missing, says what it does, changes nothing
# else. Postfix is installed with "No configuration" (no system main.cf, no
# running daemon): the tests run their own instances with `postfix -c DIR`.
# Needs root (or sudo) and Debian's package archive.
set -euo pipefail

packages=(postfix dovecot-core dovecot-submissiond openssl ca-certificates ssl-cert libsasl2-modules)

say() { printf 'install-deps: %s\n' "$*"; }

installed() {
	[[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

missing=()
for p in "${packages[@]}"; do
	if installed "$p"; then
		say "$p is installed ($(dpkg-query -W -f='${Version}' "$p"))"
	else
		missing+=("$p")
	fi
done

if ((${#missing[@]} == 0)); then
	say "nothing to do"
	exit 0
fi

sudo=()
if ((EUID != 0)); then
	if command -v sudo >/dev/null 2>&1; then
		sudo=(sudo)
	else
		say "need root to install: ${missing[*]}" >&2
		exit 1
	fi
fi

export DEBIAN_FRONTEND=noninteractive
say "preseeding postfix/main_mailer_type = No configuration"
echo "postfix postfix/main_mailer_type select No configuration" | "${sudo[@]}" debconf-set-selections
say "apt-get update"
"${sudo[@]}" apt-get update -q
say "installing: ${missing[*]}"
start=$(date +%s)
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"

# A package's post-install may start a system-wide daemon where an init
# system exists; the tests never use it, and on these machines there is none.
for p in "${missing[@]}"; do
	if ! installed "$p"; then
		say "$p did not install" >&2
		exit 1
	fi
done
say "installed ${missing[*]} in $(($(date +%s) - start))s"
for b in postfix postconf postqueue dovecot; do
	if ! PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null; then
		say "$b is still missing after the install" >&2
		exit 1
	fi
done
say "postfix $(PATH=$PATH:/usr/sbin postconf -h mail_version 2>/dev/null || echo '?'), dovecot $(PATH=$PATH:/usr/sbin dovecot --version 2>/dev/null || echo '?')"
