#!/bin/bash
# Render rabbitmq.conf from CLEARANCE_AMQP_URL (amqp://USER:PASSWORD@HOST:PORT/) and run
# the broker in the foreground, logging to the console. The user is created on the
# first start (an empty database); later starts keep what the volume holds.
set -euo pipefail

url=${CLEARANCE_AMQP_URL:?set CLEARANCE_AMQP_URL (deploy/clearance.env)}
if [[ ! $url =~ ^amqps?://([^:@/]+):([^@/]+)@ ]]; then
  echo "rabbitmq: CLEARANCE_AMQP_URL must look like amqp://USER:PASSWORD@HOST:PORT/" >&2
  exit 2
fi
user=${BASH_REMATCH[1]} password=${BASH_REMATCH[2]}
if [[ $user$password == *[%[:space:]]* ]]; then
  echo "rabbitmq: use a user and password that need no URL encoding" >&2
  exit 2
fi

umask 077
cat >"$RABBITMQ_CONFIG_FILE" <<CONF
default_user = $user
default_pass = $password
listeners.tcp.default = 5672
log.console = true
log.console.level = info
log.file = false
CONF

exec rabbitmq-server "$@"
