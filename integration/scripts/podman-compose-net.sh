#!/usr/bin/env bash
# podman, as podman-compose 1.0.3 (Debian 12's) should call it: give this script as its
# --podman-path. That version passes a service's network_mode to `podman run` as --network and
# still adds the project's network (--net NAME --network-alias SERVICE), which Podman refuses
# ("cannot set multiple networks without bridge network mode"), and it passes network_mode
# "service:NAME" through, which Podman does not know. Later versions do both right. Here, on
# `run` and `create` with --network: the --net and --network-alias pairs are dropped, and
# service:NAME becomes container:PROJECT_NAME_1 (the name podman-compose 1.0.3 gives the service's
# container). Every other command goes to podman unchanged.
set -euo pipefail
podman=${POSTERN_PODMAN:-podman}
run=false network=false project=
for a in "$@"; do
	case $a in
	run | create) run=true ;;
	--network) network=true ;;
	io.podman.compose.project=*) project=${a#*=} ;;
	esac
done
if ! $run || ! $network; then
	exec "$podman" "$@"
fi
args=("$@")
out=()
i=0
while ((i < ${#args[@]})); do
	a=${args[i]}
	case $a in
	--net | --network-alias)
		i=$((i + 2))
		continue
		;;
	--network)
		v=${args[i + 1]}
		if [[ $v == service:* ]]; then
			v=container:${project}_${v#service:}_1
		fi
		out+=(--network "$v")
		i=$((i + 2))
		continue
		;;
	esac
	out+=("$a")
	i=$((i + 1))
done
exec "$podman" "${out[@]}"
