"""Versioned schema migrations, as code. Append; never edit a released one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "uploads",
        up="""
        CREATE TABLE uploads (
            id              uuid PRIMARY KEY,
            owner           text NOT NULL,
            profile         text NOT NULL,
            filename        text NOT NULL,
            content_type    text NOT NULL,
            size            bigint NOT NULL CHECK (size >= 0),
            sha256          text,
            bucket          text NOT NULL,
            key             text NOT NULL UNIQUE,
            status          text NOT NULL,
            multipart_upload_id text,
            part_size       bigint,
            part_count      integer,
            detected        jsonb,
            thumbnails      jsonb NOT NULL DEFAULT '[]'::jsonb,
            reason          text,
            correlation_id  text NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            expires_at      timestamptz NOT NULL
        );
        CREATE INDEX uploads_owner_created ON uploads (owner, created_at DESC, id DESC);
        CREATE INDEX uploads_status_updated ON uploads (status, updated_at);

        CREATE TABLE upload_events (
            seq        bigserial PRIMARY KEY,
            upload_id  uuid NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
            status     text NOT NULL,
            event_id   text NOT NULL,
            actor      text NOT NULL,
            detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
            at         timestamptz NOT NULL DEFAULT now(),
            UNIQUE (upload_id, event_id)
        );
        CREATE INDEX upload_events_upload ON upload_events (upload_id, seq);
        """,
        down="""
        DROP TABLE upload_events;
        DROP TABLE uploads;
        """,
    ),
    Migration(
        2,
        "work claims",
        # One row per object version and pipeline stage: who is doing the work (a
        # claim with a lease the holder renews) and, once done, what came of it (the
        # events a duplicate delivery republishes instead of doing the work again).
        up="""
        CREATE TABLE work_claims (
            stage        text NOT NULL,
            bucket       text NOT NULL,
            key          text NOT NULL,
            etag         text NOT NULL,
            holder       text,
            claim_id     uuid,
            lease_until  timestamptz NOT NULL,
            runs         integer NOT NULL DEFAULT 1 CHECK (runs >= 1),
            finished     uuid[] NOT NULL DEFAULT '{}',
            result       jsonb,
            claimed_at   timestamptz NOT NULL DEFAULT now(),
            done_at      timestamptz,
            PRIMARY KEY (stage, bucket, key, etag),
            CHECK ((done_at IS NULL) = (result IS NULL))
        );
        CREATE INDEX work_claims_open ON work_claims (holder) WHERE done_at IS NULL;
        """,
        down="""
        DROP TABLE work_claims;
        """,
    ),
)
