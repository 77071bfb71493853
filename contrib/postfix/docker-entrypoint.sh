#!/bin/sh
# Entry point of the postfix image (Dockerfile beside this file). Each argument
# changes the configuration before Postfix starts:
#   name=value              a main.cf parameter (postconf -e)
#   service/type=entry      a master.cf service (postconf -M), e.g.
#                           "smtp/inet=127.0.0.1:2525 inet n - n - - smtpd"
# Then Postfix runs in the foreground.
set -eu
for arg in "$@"; do
	name=${arg%%=*}
	case $name in
	*/*) postconf -M "$arg" ;;
	*) postconf -e "$arg" ;;
	esac
done
postfix check
exec postfix start-fg
