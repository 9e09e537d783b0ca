-- A job the firing loop could not handle (its next fire cannot be computed,
-- its run cannot be built or written) is set aside with the error instead of
-- stopping the loop for every other job: status Faulted until its definition
-- is changed, or it is enabled or resumed again.
ALTER TABLE jobs ADD COLUMN fault text;
ALTER TABLE jobs ADD COLUMN faulted_at timestamptz;

-- asyncpg writes datetime.max/min as ±infinity and reads them back as naive
-- datetimes; earlier versions could store them as a next fire time. Such a
-- job is faulted here rather than crashing the loop that reads it.
UPDATE jobs SET fault = 'its next fire time is out of the supported range',
                faulted_at = now(), next_fire_at = NULL
    WHERE next_fire_at IN ('infinity'::timestamptz, '-infinity'::timestamptz);

-- How often the relay tried an outbox row while the broker took others: a row
-- refused again and again is given up (its run failed with the error) instead
-- of being retried at the head of the outbox for ever.
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;
