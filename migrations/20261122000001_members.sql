-- One row per running replica. Portable between SQLite and PostgreSQL: TEXT and BIGINT
-- only, times as epoch milliseconds from the database's own clock.
CREATE TABLE IF NOT EXISTS rollcall_members (
    service     TEXT   NOT NULL,
    instance_id TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    addr        TEXT   NOT NULL,
    version     TEXT   NOT NULL,
    started_at  TEXT   NOT NULL,
    last_seen   BIGINT NOT NULL,
    PRIMARY KEY (service, instance_id)
);
