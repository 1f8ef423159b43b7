#!/bin/bash
# `weed mini` locked down with the one S3 identity of CLEARANCE_S3_ACCESS_KEY/SECRET_KEY
# (without -s3.config its S3 API is open to anyone), posting filer events to the relay.
# Arguments are appended to weed mini's (e.g. -ip=seaweedfs, the name others reach it by).
set -euo pipefail

key=${CLEARANCE_S3_ACCESS_KEY:?set CLEARANCE_S3_ACCESS_KEY (deploy/clearance.env)}
secret=${CLEARANCE_S3_SECRET_KEY:?set CLEARANCE_S3_SECRET_KEY (deploy/clearance.env)}
for value in "$key" "$secret"; do
  [[ $value =~ ^[A-Za-z0-9._~+/=-]+$ ]] || { echo "seaweedfs: S3 keys may use only A-Z a-z 0-9 . _ ~ + / = -" >&2; exit 2; }
done
umask 077
mkdir -p /data/etc /data/weed /data/tmp
cat >/data/etc/s3.json <<JSON
{"identities": [{"name": "clearance", "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON

# The webhook (a best-effort nudge; the relay's catch-up reads the filer log for the
# rest). List values are SPACE-separated: a comma makes weed drop every event.
export WEED_NOTIFICATION_WEBHOOK_ENABLED=${WEED_NOTIFICATION_WEBHOOK_ENABLED:-true}
export WEED_NOTIFICATION_WEBHOOK_ENDPOINT=${WEED_NOTIFICATION_WEBHOOK_ENDPOINT:-http://relay:8081/hooks/seaweedfs}
export WEED_NOTIFICATION_WEBHOOK_BEARER_TOKEN=${CLEARANCE_WEBHOOK_TOKEN:?set CLEARANCE_WEBHOOK_TOKEN (deploy/clearance.env)}
export WEED_NOTIFICATION_WEBHOOK_EVENT_TYPES=${WEED_NOTIFICATION_WEBHOOK_EVENT_TYPES:-create update}
export WEED_NOTIFICATION_WEBHOOK_PATH_PREFIXES=${WEED_NOTIFICATION_WEBHOOK_PATH_PREFIXES:-/buckets/${CLEARANCE_BUCKET:-clearance-uploads}/}
export WEED_NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS=${WEED_NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS:-5}
export TMPDIR=/data/tmp

# mini re-applies the flags it saved in <dir>/mini.options on later starts; the flags
# below are the whole truth, so drop the saved copy.
rm -f /data/weed/mini.options
exec weed -logtostderr mini -dir=/data/weed -ip.bind=0.0.0.0 -s3.config=/data/etc/s3.json \
  -s3.port=8333 -filer.port=8888 -master.port=9333 -volume.port=9340 \
  -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false \
  "$@"
