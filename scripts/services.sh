#!/usr/bin/env bash
# Makes sure Mosquitto, PostgreSQL, MariaDB and Redis answer on 127.0.0.1, starting any that does not.
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  echo "services: nothing answers on port $1 after 30 s" >&2
  return 1
}

need_pkg() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "services: installing $2"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2") >/dev/null
}

# Tests also start private brokers (`mosquitto -c`) and make a self-signed certificate.
need_pkg mosquitto mosquitto
need_pkg openssl openssl
# The browser tier (tests/ui) drives Debian's Chromium; Playwright never downloads one.
if [ ! -x /usr/bin/chromium ]; then
  echo "services: installing chromium"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi

if ! port_open 1883; then
  echo "services: starting Mosquitto"
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
fi
if ! port_open 5432; then
  need_pkg pg_ctlcluster postgresql
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
if ! port_open 3306; then
  need_pkg mariadbd mariadb-server
  echo "services: starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
if ! port_open 6379; then
  # Redis: rate-limit counters shared by replicas (REDIS_URL); its test needs one.
  need_pkg redis-server redis-server
  echo "services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
# firmware/test-micropython.sh runs the firmware's tests under MicroPython's WebAssembly port.
need_pkg node nodejs
need_pkg npm npm
wait_port 1883 && wait_port 5432 && wait_port 3306 && wait_port 6379
