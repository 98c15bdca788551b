#!/usr/bin/env bash
# Build a Caddy with lbpool, or build it and run the local demo.
#
#   ./xcaddy.sh [build]   build ./caddy with xcaddy, as the Dockerfile and CI do; if that
#                         fails, so does the script (LBPOOL_BUILD_OFFLINE=1: plain go build)
#   ./xcaddy.sh run       build, start three demo backends, run Caddy on Caddyfile.example
#   ./xcaddy.sh help      this text
set -euo pipefail

XCADDY_VERSION=v0.4.5
CADDY_VERSION=v2.11.9
GO_MIN_MINOR=26 # go1.26 or newer

# The processes `run` starts, and only those, are stopped when the script ends.
STARTED_PIDS=()

cd "$(dirname "${BASH_SOURCE[0]}")"

usage() {
	sed -n '2,7s/^# \{0,1\}//p' "$0"
}

die() {
	echo "xcaddy.sh: $*" >&2
	exit 1
}

# require_go stops with a clear message unless go1.26 or newer is on PATH.
require_go() {
	command -v go >/dev/null 2>&1 || die "Go is not installed (need go1.${GO_MIN_MINOR} or newer): see https://go.dev/dl/"
	local version major minor
	version=$(go env GOVERSION) # e.g. go1.26.8, go1.27rc1
	if [[ ! $version =~ ^go([0-9]+)\.([0-9]+) ]]; then
		die "cannot read the Go version from '${version}' (need go1.${GO_MIN_MINOR} or newer)"
	fi
	major=${BASH_REMATCH[1]}
	minor=${BASH_REMATCH[2]}
	if ((major < 1 || (major == 1 && minor < GO_MIN_MINOR))); then
		die "${version} is too old: lbpool needs go1.${GO_MIN_MINOR} or newer"
	fi
}

# xcaddy_build runs the pinned xcaddy. xcaddy asks the module proxy about
# github.com/lbpool/lbpool even though it builds this checkout; an empty
# local proxy as the last fallback (each source falling through to the next
# on any error) turns a refusal (some proxies answer 403
# for modules they do not serve) into "not found", and then Go uses the
# checkout as xcaddy's replace directive says. Plain bash and mktemp only:
# the Docker builder is Alpine.
xcaddy_build() {
	local empty sources source proxies="" rc=0
	empty=$(mktemp -d)
	IFS=',|' read -ra sources <<<"$(go env GOPROXY)"
	for source in "${sources[@]}"; do
		case ${source} in
		direct | off | "") ;;
		*) proxies+="${source}|" ;;
		esac
	done
	GOPROXY="${proxies:-https://proxy.golang.org|}file://${empty}" \
		go run "github.com/caddyserver/xcaddy/cmd/xcaddy@${XCADDY_VERSION}" \
		build "${CADDY_VERSION}" --with github.com/lbpool/lbpool=. --output ./caddy || rc=$?
	rmdir "${empty}"
	return "${rc}"
}

# build writes ./caddy: Caddy ${CADDY_VERSION} with the lbpool modules. A
# failed xcaddy build stops here: the Docker image and CI build this way,
# and a quiet fallback would hide that their build broke.
build() {
	require_go
	if [[ ${LBPOOL_BUILD_OFFLINE:-0} == 1 ]]; then
		echo "Building ./caddy with go build (LBPOOL_BUILD_OFFLINE=1)"
		go build -o caddy ./cmd/caddy
	elif ! xcaddy_build; then
		die "the xcaddy build failed (see above); LBPOOL_BUILD_OFFLINE=1 ./xcaddy.sh builds ./caddy with plain go build instead"
	fi
	echo "Built ./caddy with:"
	./caddy list-modules | grep lbpool || die "./caddy was built without the lbpool modules"
}

# stop_started ends exactly the processes this script started and waits for them.
stop_started() {
	if ((${#STARTED_PIDS[@]} > 0)); then
		kill "${STARTED_PIDS[@]}" 2>/dev/null || true
		wait "${STARTED_PIDS[@]}" 2>/dev/null || true
	fi
}

# run builds everything, starts the backends and runs Caddy on Caddyfile.example.
run() {
	build
	go build -o ./demo/backend/backend ./demo/backend

	trap stop_started EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	local port
	for port in 9001 9002 9003; do
		./demo/backend/backend -listen "127.0.0.1:${port}" -name "app$((port - 9000))" &
		STARTED_PIDS+=("$!")
	done

	echo
	echo "Backends: app1 pid ${STARTED_PIDS[0]}, app2 pid ${STARTED_PIDS[1]}, app3 pid ${STARTED_PIDS[2]}"
	printf '  %-40s # %s\n' \
		"curl localhost:3030" "each backend answers in turn" \
		"curl -s localhost:2019/lbpool/stats | jq" "the pool as lbpool sees it" \
		"kill ${STARTED_PIDS[1]}" "stop app2: it goes down, the others take over"
	echo "Ctrl-C stops Caddy and the backends."
	echo
	# Caddy runs as a child the script waits on, so a signal to the script
	# reaches the trap at once and stops Caddy with the backends.
	./caddy run --config Caddyfile.example --adapter caddyfile &
	STARTED_PIDS+=("$!")
	wait "$!"
}

case "${1:-build}" in
build) build ;;
run) run ;;
-h | --help | help) usage ;;
*)
	usage >&2
	exit 2
	;;
esac
