-- The relay hub where replicas that cannot reach each other meet through the load
-- balancer: the affinity cookie that pins a connection to it. One row per service; the
-- first replica to write it wins, and anyone may replace a cookie that stopped working.
CREATE TABLE IF NOT EXISTS rollcall_hub (
    service TEXT   NOT NULL PRIMARY KEY,
    cookie  TEXT   NOT NULL,
    hub     TEXT   NOT NULL,
    updated BIGINT NOT NULL
);
