#!/bin/bash
# Ready = clamd answers PING with PONG (it has loaded its signatures by then).
set -euo pipefail
exec 3<>/dev/tcp/127.0.0.1/3310
printf 'zPING\0' >&3
IFS= read -r -d '' -t 3 reply <&3
[[ $reply == PONG ]]
