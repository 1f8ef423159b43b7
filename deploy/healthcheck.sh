#!/bin/bash
# http-healthcheck PORT PATH STATUS: exit 0 if GET http://127.0.0.1:PORT PATH answers
# STATUS. For images without Python (storage, edge); bash's /dev/tcp is enough.
set -euo pipefail
exec 3<>"/dev/tcp/127.0.0.1/$1"
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: healthcheck\r\n\r\n' "$2" >&3
IFS=' ' read -r -t 3 _ status _ <&3
[[ $status == "$3" ]]
