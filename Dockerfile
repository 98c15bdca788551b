# Caddy with lbpool, running demo/Caddyfile.docker. Used by docker-compose.yml.

# Stage 1: the official Caddy builder image carries Go and xcaddy.
FROM caddy:2.11.9-builder AS builder
WORKDIR /src
COPY . /src
RUN xcaddy build v2.11.9 --with github.com/lbpool/lbpool=/src --output /usr/bin/caddy

# Stage 2: the official Caddy image with the binary swapped for ours.
FROM caddy:2.11.9-alpine
COPY --from=builder /usr/bin/caddy /usr/bin/caddy
COPY demo/Caddyfile.docker /etc/caddy/Caddyfile
# 3030: the load-balanced site; 2019: Caddy's admin API with /lbpool/stats.
EXPOSE 3030 2019
