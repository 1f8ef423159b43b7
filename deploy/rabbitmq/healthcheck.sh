#!/bin/bash
# Ready = the AMQP listener answers a protocol header with Connection.Start (a frame of
# type 1). Far cheaper than rabbitmq-diagnostics, which boots an Erlang VM per check.
set -euo pipefail
exec 3<>/dev/tcp/127.0.0.1/5672
printf 'AMQP\x00\x00\x09\x01' >&3
IFS= read -r -n 1 -d '' -t 3 frame <&3
[[ $frame == $'\x01' ]]
