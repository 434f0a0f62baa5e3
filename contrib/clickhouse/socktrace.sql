-- socktrace's NDJSON stream in ClickHouse: one row per record (state,
-- closed, socket and lost records, with the fields of README.md, "The record
-- contract").  Load with the JSONEachRow format, for example
--   clickhouse-client --date_time_input_format=best_effort \
--     --query 'INSERT INTO socktrace.events FORMAT JSONEachRow' < socktrace.ndjson
-- or from a shipper (docs/pipelines.md); the queries are in docs/clickhouse.md.
-- Fields a record type does not have keep their defaults (0, '', NULL, {}).
-- tests/test_clickhouse.py creates this table, verbatim, in chdb.

CREATE DATABASE IF NOT EXISTS socktrace;

CREATE TABLE IF NOT EXISTS socktrace.events
(
    -- which machine: added by the shipper (socktrace's records do not carry it)
    host         LowCardinality(String) DEFAULT '',
    type         LowCardinality(String),                  -- state, closed, socket, lost
    ts           DateTime64(6, 'UTC'),
    conn         String,                                  -- connection id (hex)
    family       UInt8,
    laddr        IPv6,                                    -- IPv4 as ::ffff:a.b.c.d
    lport        UInt16,
    raddr        IPv6,
    rport        UInt16,
    pid          Nullable(UInt32),
    comm         LowCardinality(Nullable(String)),
    owner_from   LowCardinality(String),
    role         LowCardinality(Nullable(String)),        -- client, server, listener
    lower_bound  Bool,
    source       LowCardinality(String),                  -- bpf, proc
    approx       Bool,
    -- state records
    old          LowCardinality(String),
    new          LowCardinality(String),
    in_old_ns    Nullable(UInt64),                        -- null: its start was not seen
    via          LowCardinality(Nullable(String)),
    reason       LowCardinality(Nullable(String)),        -- expired, reused, killed
    -- closed records: one per connection, when it ends
    start_ts     Nullable(DateTime64(6, 'UTC')),
    lifetime_ns  UInt64,
    states       Map(LowCardinality(String), UInt64),     -- ns in each of the nine states
    path         Array(LowCardinality(String)),
    closed_first LowCardinality(Nullable(String)),        -- local, remote
    `end`        LowCardinality(String),                  -- normal, refused, timeout, ...
    error        LowCardinality(Nullable(String)),        -- ECONNREFUSED, ...
    -- socket records (dumps)
    state        LowCardinality(String),
    in_state_ns  Nullable(UInt64),
    age_ns       Nullable(UInt64),
    estimate     Bool,
    -- lost records
    what         LowCardinality(String),
    count        UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (host, type, ts)
TTL toDateTime(ts) + INTERVAL 30 DAY;
