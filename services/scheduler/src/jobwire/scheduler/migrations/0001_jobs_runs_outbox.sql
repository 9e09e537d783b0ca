-- The scheduler's state: job definitions, their runs, and the outbox that
-- carries what a claim decided to NATS exactly once.

CREATE TABLE jobs (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    type          text NOT NULL,
    -- The whole validated definition as the operator wrote it; the columns
    -- below are the parts queries filter or sort on.
    definition    jsonb NOT NULL,
    enabled       boolean NOT NULL DEFAULT true,
    paused        boolean NOT NULL DEFAULT false,
    group_name    text,
    priority      integer NOT NULL DEFAULT 0,
    -- The first slot not yet handled; NULL = nothing scheduled.
    next_fire_at  timestamptz,
    -- Persisted job state (e.g. a sync watermark), from the last RunFinished.
    state         jsonb,
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The claim query: due, enabled, unpaused jobs, highest priority first.
CREATE INDEX jobs_due ON jobs (next_fire_at, priority DESC)
    WHERE next_fire_at IS NOT NULL AND enabled AND NOT paused;
CREATE INDEX jobs_group ON jobs (group_name) WHERE group_name IS NOT NULL;

CREATE TABLE job_groups (
    name     text PRIMARY KEY,
    enabled  boolean NOT NULL DEFAULT true
);

CREATE TABLE runs (
    id             uuid PRIMARY KEY,
    job_id         uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    scheduled_for  timestamptz NOT NULL,
    -- schedule | catch_up | chain | queue | manual
    trigger        text NOT NULL DEFAULT 'schedule',
    -- queued, dispatched, running, succeeded, failed, cancelled, skipped, missed
    status         text NOT NULL,
    reason         text,
    fired_at       timestamptz,
    started_at     timestamptz,
    finished_at    timestamptz,
    attempt        integer NOT NULL DEFAULT 0,
    -- The job's definition version the run was fired with.
    job_version    integer NOT NULL DEFAULT 1,
    host           text,
    result         jsonb,
    error          jsonb,
    -- Latest RunProgress of a running attempt (also its heartbeat).
    progress       jsonb,
    heartbeat_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- One run per job and slot, whatever happens: the heart of exactly-once.
    UNIQUE (job_id, scheduled_for)
);

CREATE INDEX runs_active ON runs (job_id, status)
    WHERE status IN ('queued', 'dispatched', 'running');
CREATE INDEX runs_job_time ON runs (job_id, scheduled_for DESC);
CREATE INDEX runs_created ON runs (created_at);

CREATE TABLE outbox (
    id        bigserial PRIMARY KEY,
    subject   text NOT NULL,
    -- The CloudEvent, encoded when the claim decided it (its trace context too).
    payload   bytea NOT NULL,
    headers   jsonb NOT NULL,
    -- Set for start-workflow runs: the run is complete once this is published.
    completes uuid
);
