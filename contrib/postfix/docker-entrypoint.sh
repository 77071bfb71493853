#!/bin/sh
# Entry point of the postfix image (Dockerfile beside this file).
#
# Postern's snippets: the image has contrib/postfix's main.cf, main-milter.cf and
# master.cf appended to Debian's configuration. What `postern postfix-config`
# prints for your own Postern config may replace them: mount a directory at
# /etc/postfix/postern holding its two parts,
#   postern postfix-config --main   > main.cf
#   postern postfix-config --master > master.cf
# and each one present replaces the shipped snippet(s) of the same file.
#
# Then each argument changes the configuration before Postfix starts:
#   name=value              a main.cf parameter (postconf -e)
#   service/type=entry      a master.cf service (postconf -M), e.g.
#                           "smtp/inet=127.0.0.1:2525 inet n - n - - smtpd"
# and Postfix runs in the foreground, logging to standard output.
set -eu
snippets=/etc/postfix/postern
for f in main.cf master.cf; do
	if [ -f "$snippets/$f" ]; then
		cat "/etc/postfix/$f.base" "$snippets/$f" >"/etc/postfix/$f"
	fi
done
for arg in "$@"; do
	name=${arg%%=*}
	case $name in
	*/*) postconf -M "$arg" ;;
	*) postconf -e "$arg" ;;
	esac
done
postfix check
exec postfix start-fg
