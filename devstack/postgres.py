"""PostgreSQL: use the running server, start the local cluster if down, create the database."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from devstack.component import ComponentState, Owner
from devstack.layout import StackError, StackLayout
from devstack.probes import PostgresProbe, is_loopback, wait_until
from devstack.processes import is_ours, listening_pid, read_record, record_for, write_record
from shared.settings import Settings

NAME = "postgresql"
START_TIMEOUT_S = 60.0
INSTALL_HINT = "apt-get install -y postgresql"


@dataclass(frozen=True)
class Cluster:
    """A Debian postgresql-common cluster (`pg_lsclusters`)."""

    version: str
    name: str
    port: int
    data_dir: Path | None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def find_cluster(port: int) -> Cluster:
    """The local cluster configured for `port`; falls back to the newest `main`."""
    lsclusters = shutil.which("pg_lsclusters")
    if lsclusters is not None:
        done = subprocess.run(
            [lsclusters, "--json"], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode == 0:
            clusters = [
                Cluster(
                    version=str(c["version"]),
                    name=str(c["cluster"]),
                    port=int(c["port"]),
                    data_dir=Path(c["pgdata"]) if c.get("pgdata") else None,
                )
                for c in json.loads(done.stdout or "[]")
            ]
            for cluster in clusters:
                if cluster.port == port:
                    return cluster
            if clusters:
                listed = ", ".join(f"{c.version}/{c.name} on {c.port}" for c in clusters)
                raise StackError(
                    f"no local PostgreSQL cluster uses port {port} (found {listed}); "
                    "fix CLEARANCE_DATABASE_URL or create one with pg_createcluster"
                )
    versions = sorted(
        (p.name for p in Path("/etc/postgresql").glob("*") if p.is_dir()), key=_version_key
    )
    if not versions:
        raise StackError(f"no PostgreSQL cluster is installed: {INSTALL_HINT}")
    return Cluster(version=versions[-1], name="main", port=port, data_dir=None)


def _postmaster_pid(cluster: Cluster) -> int | None:
    if cluster.data_dir is None:
        return None
    try:
        return int((cluster.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class PostgresComponent:
    """The database named in `settings.database_url`."""

    settings: Settings
    layout: StackLayout

    @property
    def name(self) -> str:
        return NAME

    @property
    def _url(self) -> tuple[str, int, str]:
        parts = urlsplit(self.settings.database_url)
        host = parts.hostname or "127.0.0.1"
        database = unquote(parts.path.lstrip("/")) or (parts.username or "postgres")
        return host, parts.port or 5432, database

    @property
    def probe(self) -> PostgresProbe:
        host, port, _ = self._url
        return PostgresProbe(host, port)

    def up(self) -> str:
        host, port, database = self._url
        note = "already running" if self._ours() else "external"
        if not self.probe.check():
            note = self._start(host, port)
        created = asyncio.run(_ensure_database(self.settings.database_url, database))
        return f"{note}; database {database!r} {created}"

    def _start(self, host: str, port: int) -> str:
        if not is_loopback(host):
            raise StackError(
                f"PostgreSQL at {host}:{port} does not answer and is not on this machine: "
                "start it there or fix CLEARANCE_DATABASE_URL"
            )
        pg_ctlcluster = shutil.which("pg_ctlcluster")
        if pg_ctlcluster is None:
            raise StackError(
                f"PostgreSQL does not answer on {host}:{port} and pg_ctlcluster is missing: "
                f"{INSTALL_HINT}"
            )
        cluster = find_cluster(port)
        argv = [pg_ctlcluster, "--skip-systemctl-redirect", cluster.version, cluster.name, "start"]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise StackError(
                f"`{' '.join(argv[1:])}` failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}"
            )
        if not wait_until(self.probe.check, START_TIMEOUT_S):
            raise StackError(
                f"PostgreSQL {cluster.version}/{cluster.name} started but does not answer on "
                f"{host}:{port}; read /var/log/postgresql/"
            )
        pid = _postmaster_pid(cluster) or listening_pid(port)
        found = (
            record_for(pid, {"version": cluster.version, "cluster": cluster.name}) if pid else None
        )
        if found is None:
            return (
                "started, pid unknown so `stack down` leaves it: "
                f"pg_ctlcluster {cluster.version} {cluster.name} stop"
            )
        write_record(self.layout.pid_file(NAME), found)
        return f"started cluster {cluster.version}/{cluster.name}"

    def _ours(self) -> bool:
        record = read_record(self.layout.pid_file(NAME))
        return record is not None and is_ours(record)

    def down(self) -> str:
        pid_file = self.layout.pid_file(NAME)
        record = read_record(pid_file)
        if record is None or not is_ours(record):
            pid_file.unlink(missing_ok=True)
            return (
                "left running (not started by clearance)" if self.probe.check() else "not running"
            )
        pg_ctlcluster = shutil.which("pg_ctlcluster") or "pg_ctlcluster"
        version, cluster = record.extra.get("version", ""), record.extra.get("cluster", "main")
        started = time.monotonic()
        done = subprocess.run(
            [pg_ctlcluster, "--skip-systemctl-redirect", version, cluster, "stop"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise StackError(
                f"pg_ctlcluster {version} {cluster} stop failed: {done.stderr.strip()}"
            )
        pid_file.unlink(missing_ok=True)
        return f"stopped in {time.monotonic() - started:.1f} s"

    def state(self) -> ComponentState:
        host, port, _ = self._url
        up = self.probe.check()
        record = read_record(self.layout.pid_file(NAME))
        ours = record is not None and is_ours(record)
        owner: Owner = ("us" if ours else "external") if up else "-"
        pid = record.pid if ours and record is not None else (listening_pid(port) if up else None)
        return ComponentState(NAME, up, owner, f"{host}:{port}", pid)


async def _ensure_database(url: str, database: str) -> str:
    """Create `database` unless it exists; returns "exists" or "created"."""
    # Imported here so `status` and `down` start fast.
    import asyncpg

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            conn = await asyncpg.connect(url, timeout=5)
        except asyncpg.InvalidCatalogNameError:
            break
        except (asyncpg.CannotConnectNowError, OSError, TimeoutError) as exc:
            # Right after a start the server refuses connections for a moment.
            if time.monotonic() > deadline:
                raise StackError(f"PostgreSQL does not accept connections: {exc}") from exc
            await asyncio.sleep(0.2)
            continue
        except (
            asyncpg.InvalidPasswordError,
            asyncpg.InvalidAuthorizationSpecificationError,
        ) as exc:
            raise StackError(
                f"PostgreSQL refuses the credentials in CLEARANCE_DATABASE_URL: {exc}"
            ) from exc
        await conn.close()
        return "exists"
    admin = await asyncpg.connect(url, database="postgres", timeout=5)
    try:
        # Identifiers cannot be bind parameters; let the server quote the name.
        quoted = await admin.fetchval("SELECT quote_ident($1)", database)
        try:
            await admin.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return "exists"  # created concurrently by another `stack up`
        except asyncpg.InsufficientPrivilegeError as exc:
            raise StackError(
                f"database {database!r} is missing and the configured user may not create it: "
                f"createdb {database}"
            ) from exc
    finally:
        await admin.close()
    return "created"
