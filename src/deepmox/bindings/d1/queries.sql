-- Named queries for the jobs store and the pull cycle, one SQLite dialect for
-- both D1 backends: positional parameters, no transactions (a batch is atomic).
-- Lists of rows travel as one JSON parameter read with json_each(), which keeps
-- every statement under D1's 100-parameter limit whatever the batch size.
-- Every write that an actor makes is fenced by its lease token.

-- name: insert_job
INSERT INTO jobs (id, kind, payload, state, priority, run_at, attempt, max_attempts,
                  idempotency_key, created_at, updated_at)
VALUES (?, ?, ?, 'pending', ?, ?, 0, ?, ?, ?, ?)
ON CONFLICT (idempotency_key) DO NOTHING;

-- name: insert_jobs_json
INSERT INTO jobs (id, kind, payload, state, priority, run_at, attempt, max_attempts,
                  idempotency_key, created_at, updated_at)
SELECT j.value->>'id', j.value->>'kind', j.value->>'payload', 'pending', j.value->>'priority',
       j.value->>'run_at', 0, j.value->>'max_attempts', j.value->>'idempotency_key',
       j.value->>'ts', j.value->>'ts'
FROM json_each(?) AS j WHERE true
ON CONFLICT (idempotency_key) DO NOTHING;

-- name: submitted_events
-- Only the rows this submission created: a repeated idempotency key inserted nothing.
INSERT INTO job_events (job_id, type, ts, attempt, state, progress, node)
SELECT jobs.id, 'submitted', jobs.created_at, 0, 'pending', 0, ?
FROM json_each(?) AS j JOIN jobs ON jobs.id = j.value;

-- name: jobs_by_id_or_key
SELECT {JOB_COLUMNS} FROM json_each(?) AS j
JOIN jobs ON jobs.id = j.value->>'id'
          OR (j.value->>'key' IS NOT NULL AND jobs.idempotency_key = j.value->>'key');

-- name: get_job
SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?;

-- name: list_jobs
SELECT {JOB_COLUMNS} FROM jobs
WHERE (? IS NULL OR state = ?) AND (? IS NULL OR kind = ?)
ORDER BY created_at DESC, id DESC LIMIT ?;

-- name: job_events
SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = ? ORDER BY id;

-- name: count_by_state
SELECT state, count(*) AS n FROM jobs GROUP BY state;

-- name: cancel_events
INSERT INTO job_events (job_id, type, ts, attempt, state, progress, step, detail, node)
SELECT id, 'cancelled', ?, attempt, 'cancelled', progress, step, ?, ?
FROM jobs WHERE id = ? AND state IN ('pending', 'in_progress');

-- name: cancel
UPDATE jobs SET state = 'cancelled', lease_token = NULL, lease_until = NULL,
                updated_at = ?, finished_at = ?
WHERE id = ? AND state IN ('pending', 'in_progress');

-- name: retry_events
INSERT INTO job_events (job_id, type, ts, attempt, state, progress, step, detail, node)
SELECT id, 'retried', ?, 0, 'pending', progress, step, ?, ?
FROM jobs WHERE id = ? AND state IN ('failed', 'cancelled');

-- name: retry
UPDATE jobs SET state = 'pending', attempt = 0, run_at = ?, deferred_s = 0,
                updated_at = ?, finished_at = NULL
WHERE id = ? AND state IN ('failed', 'cancelled');

-- name: reap_failed_events
INSERT INTO job_events (job_id, type, ts, attempt, state, progress, step, error_class, detail, node)
SELECT id, 'failed', ?, attempt, 'failed', progress, step, 'zombie',
       'attempts exhausted: the last actor vanished', ?
FROM jobs WHERE state = 'in_progress' AND lease_until < ? AND attempt >= max_attempts;

-- name: reap_events
INSERT INTO job_events (job_id, type, ts, attempt, state, progress, step, error_class, detail, node)
SELECT id, 'reaped', ?, attempt,
       CASE WHEN attempt >= max_attempts THEN 'failed' ELSE 'pending' END,
       progress, step, 'zombie',
       json_object('lease', lease_token, 'owner', lease_owner, 'lease_until', lease_until), ?
FROM jobs WHERE state = 'in_progress' AND lease_until < ?;

-- name: reap
UPDATE jobs SET
    state = CASE WHEN attempt >= max_attempts THEN 'failed' ELSE 'pending' END,
    error_class = 'zombie',
    error_message = 'the actor vanished: the lease of ' || coalesce(lease_owner, '?') || ' expired',
    lease_token = NULL, lease_until = NULL, run_at = ?, updated_at = ?,
    finished_at = CASE WHEN attempt >= max_attempts THEN ? END
WHERE state = 'in_progress' AND lease_until < ?;

-- name: claim
-- Parameters: now, budgets (JSON object kind -> lease seconds), default lease
-- seconds, token, owner, now, now, kinds (JSON array), cap for these kinds, free slots,
-- token.
-- The LIMIT subtracts what earlier claim statements of this batch (same token)
-- already took, so several per-kind claims never exceed the free slots.
UPDATE jobs SET state = 'in_progress', attempt = attempt + 1,
    lease_until = ? + coalesce((SELECT value FROM json_each(?) WHERE key = jobs.kind), ?),
    lease_token = ?, lease_owner = ?, updated_at = ?
WHERE id IN (
    SELECT id FROM jobs INDEXED BY jobs_due
    WHERE state = 'pending' AND run_at <= ? AND kind IN (SELECT value FROM json_each(?))
    ORDER BY priority DESC, run_at, id
    LIMIT max(0, min(?, ? - (SELECT count(*) FROM jobs WHERE lease_token = ?)))
)
RETURNING id, kind, payload, attempt, max_attempts, lease_token, lease_until, checkpoint,
          progress, deferred_s, step;

-- name: claimed_events
-- Parameters: details (JSON object kind -> the event's detail text), now, token.
-- The supervisor writes each kind's detail itself (the lease and its end, as
-- the claim computes it), so that it knows the event without reading it
-- back; in job id order, so that it knows which id each event got.
INSERT INTO job_events (job_id, type, ts, attempt, state, progress, step, detail, node)
WITH d AS MATERIALIZED (SELECT key AS kind, value AS detail FROM json_each(?))
SELECT jobs.id, 'claimed', ?, attempt, 'in_progress', progress, step,
       coalesce(d.detail, json_object('lease', lease_token, 'lease_until', lease_until)),
       lease_owner
FROM jobs LEFT JOIN d ON d.kind = jobs.kind
WHERE jobs.lease_token = ? ORDER BY jobs.id;

-- name: adopt
-- Rows claimed by a cycle whose answer never arrived: the claim may have committed.
SELECT id, kind, payload, attempt, max_attempts, lease_token, lease_until, checkpoint,
       progress, deferred_s, step
FROM jobs WHERE state = 'in_progress' AND lease_token IN (SELECT value FROM json_each(?));

-- name: ack_events
-- The acknowledgement rows are unpacked once (a materialized CTE) rather than
-- once per column reference; the unary + keeps the planner on the primary key.
-- In the order of the acknowledgements, so that the supervisor knows which id
-- each event got (it publishes its own events to the feed without reading
-- them back); INSERT comes first, or Python's sqlite3 reports no changes.
INSERT INTO job_events (job_id, type, ts, attempt, state, progress, step, error_class, detail, node)
WITH a AS MATERIALIZED (
    SELECT key AS n, value->>'id' AS id, value->>'tok' AS tok, value->>'event' AS event,
           value->>'ts' AS ts, value->>'state' AS state, value->>'progress' AS progress,
           value->>'step' AS step, value->>'error_class' AS error_class,
           value->>'detail' AS detail
    FROM json_each(?))
SELECT jobs.id, a.event, a.ts, jobs.attempt, a.state, coalesce(a.progress, jobs.progress),
       coalesce(a.step, jobs.step), a.error_class, a.detail, ?
FROM a CROSS JOIN jobs ON jobs.id = a.id
WHERE jobs.lease_token = a.tok AND +jobs.state = 'in_progress'
ORDER BY a.n;

-- name: ack
WITH a AS MATERIALIZED (
    SELECT value->>'id' AS id, value->>'tok' AS tok, value->>'ack' AS ack,
           value->>'state' AS state, value->>'ts' AS ts,
           value->>'attempt_delta' AS attempt_delta, value->>'run_at' AS run_at,
           value->>'has_checkpoint' AS has_checkpoint, value->>'checkpoint' AS checkpoint,
           value->>'progress' AS progress, value->>'step' AS step,
           value->>'error_class' AS error_class, value->>'error_message' AS error_message,
           value->>'result' AS result, value->>'deferred_add' AS deferred_add
    FROM json_each(?))
UPDATE jobs SET
    state = a.state,
    attempt = jobs.attempt + coalesce(a.attempt_delta, 0),
    run_at = coalesce(a.run_at, jobs.run_at),
    checkpoint = CASE WHEN a.has_checkpoint THEN a.checkpoint ELSE jobs.checkpoint END,
    progress = coalesce(a.progress, jobs.progress),
    step = coalesce(a.step, jobs.step),
    error_class = a.error_class,
    error_message = a.error_message,
    result = a.result,
    deferred_s = jobs.deferred_s + coalesce(a.deferred_add, 0),
    lease_token = CASE WHEN a.state = 'in_progress' THEN jobs.lease_token END,
    lease_until = CASE WHEN a.state = 'in_progress' THEN jobs.lease_until END,
    last_ack = a.ack,
    updated_at = a.ts,
    finished_at = CASE WHEN a.state IN ('completed', 'failed', 'cancelled') THEN a.ts END
FROM a
WHERE jobs.id = a.id AND jobs.lease_token = a.tok AND +jobs.state = 'in_progress'
RETURNING jobs.id;

-- name: complete_events
-- The common case, completions, in a leaner shape: arrays
-- [id, tok, ts, step, ack, result, checkpoint] instead of objects, fewer fields;
-- in their order, as ack_events.
INSERT INTO job_events (job_id, type, ts, attempt, state, progress, step, node)
WITH a AS MATERIALIZED (
    SELECT key AS n, value->>0 AS id, value->>1 AS tok, value->>2 AS ts, value->>3 AS step
    FROM json_each(?))
SELECT jobs.id, 'completed', a.ts, jobs.attempt, 'completed', 1.0,
       coalesce(a.step, jobs.step), ?
FROM a CROSS JOIN jobs ON jobs.id = a.id
WHERE jobs.lease_token = a.tok AND +jobs.state = 'in_progress'
ORDER BY a.n;

-- name: complete
WITH a AS MATERIALIZED (
    SELECT value->>0 AS id, value->>1 AS tok, value->>2 AS ts, value->>3 AS step,
           value->>4 AS ack, value->>5 AS result, value->>6 AS checkpoint
    FROM json_each(?))
UPDATE jobs SET
    state = 'completed', progress = 1.0, step = coalesce(a.step, jobs.step),
    error_class = NULL, error_message = NULL, result = a.result, checkpoint = a.checkpoint,
    lease_token = NULL, lease_until = NULL, last_ack = a.ack, updated_at = a.ts,
    finished_at = a.ts
FROM a
WHERE jobs.id = a.id AND jobs.lease_token = a.tok AND +jobs.state = 'in_progress'
RETURNING jobs.id;

-- name: ack_check
-- Which acks took effect, in this request or in an earlier one whose answer was lost.
SELECT jobs.id FROM json_each(?) AS a JOIN jobs ON jobs.id = a.value->>'id'
WHERE jobs.last_ack = a.value->>'ack';

-- name: lease_lost_events
-- Each note names the write it is about, so a note sent again after a cycle
-- whose answer was lost (it may have been recorded) is recorded once.
INSERT INTO job_events (job_id, type, ts, attempt, state, progress, step, error_class, detail, node)
SELECT jobs.id, 'lease_lost', ?, jobs.attempt, jobs.state, jobs.progress, jobs.step, NULL,
       l.value->>'detail', ?
FROM json_each(?) AS l JOIN jobs ON jobs.id = l.value->>'id'
WHERE NOT EXISTS (SELECT 1 FROM job_events AS e WHERE e.job_id = jobs.id
                  AND e.type = 'lease_lost' AND e.detail = l.value->>'detail');

-- name: throttle_extend
INSERT INTO throttles (upstream, blocked_until, reason, updated_at)
SELECT t.value->>'upstream', t.value->>'until', t.value->>'reason', ?
FROM json_each(?) AS t WHERE true
ON CONFLICT (upstream) DO UPDATE SET
    blocked_until = max(throttles.blocked_until, excluded.blocked_until),
    reason = excluded.reason, updated_at = excluded.updated_at;

-- name: throttles_active
SELECT upstream, blocked_until, reason FROM throttles WHERE blocked_until > ?;

-- name: encode_speed
SELECT speed, samples FROM encode_speeds WHERE kind = ? AND rendition = ?;

-- name: encode_speed_observe
-- An exponentially weighted mean that leans towards the slower observations.
INSERT INTO encode_speeds (kind, rendition, speed, samples, updated_at)
VALUES (?, ?, ?, 1, ?)
ON CONFLICT (kind, rendition) DO UPDATE SET
    speed = CASE WHEN excluded.speed < encode_speeds.speed
                 THEN encode_speeds.speed + 0.6 * (excluded.speed - encode_speeds.speed)
                 ELSE encode_speeds.speed + 0.3 * (excluded.speed - encode_speeds.speed) END,
    samples = encode_speeds.samples + 1,
    updated_at = excluded.updated_at;

-- name: tail_events
-- The fleet's timeline since the last event seen, for the live feed.
SELECT e.id, e.job_id, j.kind, e.type, e.ts, e.attempt, e.state, e.progress, e.step,
       e.error_class, e.detail, e.node
FROM job_events AS e LEFT JOIN jobs AS j ON j.id = e.job_id
WHERE e.id > ? ORDER BY e.id LIMIT ?;

-- name: tail_ranges
-- The events with ids in the given ranges, for the live feed: a JSON array of
-- [after, up_to] pairs (ids the pull cycles did not account for).
SELECT e.id, e.job_id, j.kind, e.type, e.ts, e.attempt, e.state, e.progress, e.step,
       e.error_class, e.detail, e.node
FROM json_each(?) AS g
JOIN job_events AS e ON e.id > g.value->>0 AND e.id <= g.value->>1
LEFT JOIN jobs AS j ON j.id = e.job_id
ORDER BY e.id;

-- name: last_event_id
SELECT coalesce(max(id), 0) FROM job_events;

-- name: feed_snapshot_jobs
-- Jobs in progress, and the most recently submitted others.
SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'in_progress'
UNION ALL
SELECT * FROM (SELECT {JOB_COLUMNS} FROM jobs WHERE state != 'in_progress'
               ORDER BY created_at DESC, id DESC LIMIT ?);

-- name: oldest_pending
SELECT min(run_at) FROM jobs WHERE state = 'pending';
