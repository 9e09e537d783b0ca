-- The message as it goes out, rendered once when the email is queued: every
-- attempt sends these bytes (a resend is the same bytes, not a new rendering),
-- and no attempt renders. Kept only up to the mailer's keep_rendered_bytes
-- (larger ones are rendered at each attempt, to the same bytes) and deleted
-- once the email is sent or failed.
CREATE TABLE rendered (
    email_id uuid PRIMARY KEY REFERENCES emails (id) ON DELETE CASCADE,
    data     bytea NOT NULL,
    -- Rendered with raw UTF-8 headers (an address needs SMTPUTF8): only a
    -- server offering SMTPUTF8 can take these bytes.
    smtputf8 boolean NOT NULL
);

-- Compressing would cost PostgreSQL CPU on every insert and every read, for
-- space held only until the email is sent: store the bytes as they are.
ALTER TABLE rendered ALTER COLUMN data SET STORAGE EXTERNAL;
