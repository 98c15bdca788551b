# Caddy with lbpool, running demo/Caddyfile.docker. Used by docker-compose.yml.

# Stage 1: the official Caddy builder image carries Go (and git). The build is
# the one CI runs, ./xcaddy.sh build: plain `xcaddy build --with
# github.com/lbpool/lbpool=/src` asks the module proxy for this unpublished
# module and fails, which the script works around.
FROM caddy:2.11.9-builder AS builder
# xcaddy.sh is a bash script; the builder image (Alpine) has only sh.
RUN apk add --no-cache bash
WORKDIR /src
COPY . /src
# CI runs this very command (a test in demo/ holds the two together).
RUN ./xcaddy.sh build

# Stage 2: the official Caddy image with the binary swapped for ours.
FROM caddy:2.11.9-alpine
COPY --from=builder /src/caddy /usr/bin/caddy
COPY demo/Caddyfile.docker /etc/caddy/Caddyfile
# 3030: the load-balanced site; 2019: Caddy's admin API with /lbpool/stats.
EXPOSE 3030 2019
