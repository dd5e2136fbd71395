-- deepmox 0001: jobs, their timeline, shared throttles.
-- Times are Unix seconds (REAL). JSON columns hold TEXT.
CREATE TABLE IF NOT EXISTS jobs (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    priority        INTEGER NOT NULL DEFAULT 0,
    run_at          REAL NOT NULL,
    attempt         INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    lease_until     REAL,
    lease_token     TEXT,
    lease_owner     TEXT,
    last_ack        TEXT,
    checkpoint      TEXT,
    progress        REAL NOT NULL DEFAULT 0,
    step            TEXT,
    error_class     TEXT,
    error_message   TEXT,
    idempotency_key TEXT UNIQUE,
    result          TEXT,
    deferred_s      REAL NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    finished_at     REAL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (priority DESC, run_at, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_until) WHERE state = 'in_progress';
CREATE INDEX IF NOT EXISTS jobs_token ON jobs (lease_token) WHERE lease_token IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS job_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL,
    type        TEXT NOT NULL,
    ts          REAL NOT NULL,
    attempt     INTEGER NOT NULL,
    state       TEXT NOT NULL,
    progress    REAL NOT NULL DEFAULT 0,
    step        TEXT,
    error_class TEXT,
    detail      TEXT,
    node        TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, id);
CREATE TABLE IF NOT EXISTS throttles (
    upstream      TEXT PRIMARY KEY,
    blocked_until REAL NOT NULL,
    reason        TEXT,
    updated_at    REAL NOT NULL
);
