-- The admin API: who may call it (tokens), what they changed (audit log),
-- bulk catch-up runs (backfills), and what a manual run was asked for.

CREATE TABLE api_tokens (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    -- SHA-256 of the token. The token itself is shown once, at creation, and
    -- never stored: a copy of this table lets nobody in.
    token_hash    bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- A name is reusable once its token is revoked; revoked tokens stay listed.
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The token name that made the change ("cli" for direct database tools).
    actor        text NOT NULL,
    -- job.create, job.update, job.delete, job.enable, job.disable, job.pause,
    -- job.resume, job.trigger, job.backfill, run.cancel, group.enable,
    -- group.disable, token.create, token.revoke
    action       text NOT NULL,
    target_type  text NOT NULL,  -- job | run | group | token
    target       text NOT NULL,
    before       jsonb,
    after        jsonb
);

CREATE INDEX audit_log_target ON audit_log (target_type, target, at DESC);
CREATE INDEX audit_log_at ON audit_log (at DESC);

CREATE TABLE backfills (
    id               uuid PRIMARY KEY,
    job_id           uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    range_from       timestamptz NOT NULL,
    range_to         timestamptz NOT NULL,
    rate_per_second  double precision NOT NULL,
    -- The slots planned when it was requested, oldest first; `created` of
    -- them have been handled (a run created, or found already there).
    slots            timestamptz[] NOT NULL,
    created          integer NOT NULL DEFAULT 0,
    -- running | succeeded | failed | interrupted
    status           text NOT NULL DEFAULT 'running',
    error            text,
    requested_by     text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);

-- Parameter overrides of a manual trigger, and who asked for a run or its end.
ALTER TABLE runs ADD COLUMN params jsonb;
ALTER TABLE runs ADD COLUMN requested_by text;
ALTER TABLE runs ADD COLUMN cancel_requested_at timestamptz;

-- Run history across all jobs, newest first.
CREATE INDEX runs_time ON runs (scheduled_for DESC);
