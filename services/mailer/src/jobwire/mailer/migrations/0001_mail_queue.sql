-- The mailer's state: its queue of email, each attempt, the conversation log
-- (email sent and received, for threading and the address book), the address
-- book, and the outbox that carries every email event to NATS exactly once.

CREATE TABLE emails (
    -- email_id(idempotency_key): the same command twice is one row.
    id              uuid PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    account         text NOT NULL,
    message_id      text NOT NULL,
    conversation_id text,
    -- The SendEmail as accepted (normalised addresses, threading resolved).
    command         jsonb NOT NULL,
    -- References of the email, from the conversation it answers.
    refs            text[] NOT NULL DEFAULT '{}',
    -- queued → sending → (deferred → sending)* → sent | failed
    status          text NOT NULL
                    CHECK (status IN ('queued', 'sending', 'deferred', 'sent', 'failed')),
    queued_at       timestamptz NOT NULL,
    -- When it may be taken: send_at or queued_at, a deferral's next attempt,
    -- or (while sending) the end of the sender's lease.
    due_at          timestamptz NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    claimed_by      text,
    -- Envelope recipients not yet settled; a deferral retries only these.
    pending         text[] NOT NULL,
    accepted        text[] NOT NULL DEFAULT '{}',
    refused         jsonb NOT NULL DEFAULT '[]',
    last_code       integer,
    last_reply      text,
    finished_at     timestamptz
);

-- The claim: what is due, oldest first; settled email is not in the index.
CREATE INDEX emails_due ON emails (due_at) WHERE status IN ('queued', 'sending', 'deferred');
CREATE INDEX emails_listing ON emails (queued_at DESC, id DESC);
CREATE INDEX emails_conversation ON emails (conversation_id, queued_at) WHERE conversation_id IS NOT NULL;

CREATE TABLE attempts (
    email_id    uuid NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    host        text NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    -- sent | deferred | failed; empty while running (or when its sender died).
    outcome     text,
    code        integer,
    reply       text,
    recipients  jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (email_id, attempt)
);

-- Every conversation email the mailer knows: those it sent, and those email
-- listeners received (read from their StartWorkflow commands).
CREATE TABLE messages (
    message_id      text PRIMARY KEY,
    direction       text NOT NULL CHECK (direction IN ('sent', 'received')),
    conversation_id text,
    email_id        uuid,
    in_reply_to     text,
    refs            text[] NOT NULL DEFAULT '{}',
    sender          jsonb,
    recipients      jsonb NOT NULL DEFAULT '[]',
    subject         text NOT NULL DEFAULT '',
    at              timestamptz NOT NULL,
    -- Set once address-book-populate took this message's addresses in: a run
    -- takes what is not, so it resumes where the last stopped and skips none.
    contacts_done   boolean NOT NULL DEFAULT false
);

CREATE INDEX messages_contacts_todo ON messages (at, message_id) WHERE NOT contacts_done;
CREATE INDEX messages_conversation ON messages (conversation_id, at) WHERE conversation_id IS NOT NULL;

CREATE TABLE contacts (
    -- address_key: lower-cased local part + IDNA domain.
    key                  text PRIMARY KEY,
    address              text NOT NULL,
    name                 text,
    first_seen           timestamptz NOT NULL,
    last_seen            timestamptz NOT NULL,
    sent_count           bigint NOT NULL DEFAULT 0,
    received_count       bigint NOT NULL DEFAULT 0,
    last_conversation_id text
);

-- Autocomplete: prefix lookups by address and by name.
CREATE INDEX contacts_key_prefix ON contacts (key text_pattern_ops);
CREATE INDEX contacts_name_prefix ON contacts (lower(name) text_pattern_ops) WHERE name IS NOT NULL;

CREATE TABLE outbox (
    id       bigserial PRIMARY KEY,
    subject  text NOT NULL,
    payload  bytea NOT NULL,
    headers  jsonb NOT NULL,
    attempts integer NOT NULL DEFAULT 0
);
