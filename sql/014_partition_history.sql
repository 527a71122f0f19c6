-- 014_partition_history: the large history tables partitioned by month (issue 15 point 3).
--
-- triggered_alerts by triggered_at, delivery_logs by window_start (the notification's window
-- start, a new column) and alert_feedback by ts: native range partitions of one UTC calendar
-- month each, named <table>_pYYYY_MM, plus a DEFAULT partition <table>_default that takes any
-- row no month partition covers, so a write never fails for a missing month. `smart-alerts
-- maintain` (sinks/partitions.py) creates the coming months' partitions, moves rows of a month
-- out of the default partition when it creates that month's, and drops expired months.
--
-- Every key is event time or the notification's window, never the wall clock, so a replayed
-- row lands in the same partition and meets its first copy: the primary keys and the unique
-- key the writers upsert on include the partition key (PostgreSQL requires it of every unique
-- index of a partitioned table). delivery_logs.alert_id loses its foreign key (a key into a
-- partitioned table needs the partition key too; the column is the platform's, almost always
-- NULL: deliveries are per notification).

-- ---------------------------------------------------------------------------- the month function

CREATE FUNCTION history_partition_month(parent text, month date) RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    first   timestamp := date_trunc('month', month::timestamp);
    child   text := format('%s_p%s', parent, to_char(first, 'YYYY_MM'));
    lower_  timestamptz := first AT TIME ZONE 'UTC';
    upper_  timestamptz := (first + interval '1 month') AT TIME ZONE 'UTC';
    key     text;
BEGIN
    IF to_regclass(quote_ident(child)) IS NOT NULL THEN
        RETURN false;
    END IF;
    SELECT a.attname INTO STRICT key
    FROM pg_partitioned_table p
    JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = parent::regclass;
    -- Rows of the month that went to the default partition move to the new one; the lock
    -- keeps writers from adding more until the partition is attached.
    EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', parent || '_default');
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   child, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 RETURNING *) '
                   'INSERT INTO %I SELECT * FROM moved',
                   parent || '_default', key, key, child)
        USING lower_, upper_;
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   parent, child, lower_, upper_);
    RETURN true;
END
$$;

COMMENT ON FUNCTION history_partition_month(text, date) IS
    'Create the partition of parent for the UTC month of month (<parent>_pYYYY_MM), moving that '
    'month''s rows out of <parent>_default; false when it exists already.';

-- ---------------------------------------------------------------------------- the swap

-- The views read the tables being replaced: kept here, dropped with them, made again below.
CREATE TEMP TABLE saved_views ON COMMIT DROP AS
SELECT c.oid, c.relname, rtrim(pg_get_viewdef(c.oid), '; ' || chr(10)) AS definition,
       obj_description(c.oid, 'pg_class') AS remark
FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v';

ALTER TABLE delivery_logs ADD COLUMN window_start timestamptz;
UPDATE delivery_logs d SET window_start = c.window_start
FROM consolidated_alerts c WHERE c.id = d.notification_id;
UPDATE delivery_logs SET window_start = created_at WHERE window_start IS NULL;
UPDATE triggered_alerts SET triggered_at = created_at WHERE triggered_at IS NULL;

ALTER TABLE triggered_alerts RENAME TO triggered_alerts_old;
ALTER TABLE delivery_logs RENAME TO delivery_logs_old;
ALTER TABLE alert_feedback RENAME TO alert_feedback_old;

CREATE TABLE triggered_alerts
    (LIKE triggered_alerts_old INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS)
    PARTITION BY RANGE (triggered_at);
CREATE TABLE delivery_logs
    (LIKE delivery_logs_old INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS)
    PARTITION BY RANGE (window_start);
CREATE TABLE alert_feedback
    (LIKE alert_feedback_old INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS)
    PARTITION BY RANGE (ts);
CREATE TABLE triggered_alerts_default PARTITION OF triggered_alerts DEFAULT;
CREATE TABLE delivery_logs_default PARTITION OF delivery_logs DEFAULT;
CREATE TABLE alert_feedback_default PARTITION OF alert_feedback DEFAULT;

-- A month partition for every month the rows fall in, then the rows.
SELECT history_partition_month('triggered_alerts', m)
FROM (SELECT DISTINCT (triggered_at AT TIME ZONE 'UTC')::date AS m FROM triggered_alerts_old) AS x;
SELECT history_partition_month('delivery_logs', m)
FROM (SELECT DISTINCT (window_start AT TIME ZONE 'UTC')::date AS m FROM delivery_logs_old) AS x;
SELECT history_partition_month('alert_feedback', m)
FROM (SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date AS m FROM alert_feedback_old) AS x;

INSERT INTO triggered_alerts SELECT * FROM triggered_alerts_old;
INSERT INTO delivery_logs SELECT * FROM delivery_logs_old;
INSERT INTO alert_feedback SELECT * FROM alert_feedback_old;

DROP TABLE triggered_alerts_old, delivery_logs_old, alert_feedback_old CASCADE;

-- ---------------------------------------------------------------------------- keys and indexes

ALTER TABLE triggered_alerts
    ADD CONSTRAINT triggered_alerts_pkey PRIMARY KEY (id, triggered_at),
    ADD CONSTRAINT triggered_alerts_rule_id_fkey FOREIGN KEY (rule_id) REFERENCES alert_rules (id);
CREATE INDEX idx_triggered_alerts_user_id ON triggered_alerts (user_id);
CREATE INDEX idx_triggered_alerts_status ON triggered_alerts (status);
CREATE INDEX idx_triggered_alerts_triggered_at ON triggered_alerts (triggered_at);
CREATE INDEX idx_triggered_alerts_rule_id_triggered_at ON triggered_alerts (rule_id, triggered_at);
CREATE INDEX idx_triggered_alerts_user_id_triggered_at
    ON triggered_alerts (user_id, triggered_at DESC, id DESC);
CREATE INDEX idx_triggered_alerts_user_external_id_triggered_at
    ON triggered_alerts (user_external_id, triggered_at DESC);
CREATE INDEX idx_triggered_alerts_symbol_triggered_at ON triggered_alerts (symbol, triggered_at);

ALTER TABLE delivery_logs
    ALTER COLUMN window_start SET NOT NULL,
    ADD CONSTRAINT delivery_logs_pkey PRIMARY KEY (id, window_start),
    ADD CONSTRAINT delivery_logs_notification_channel_destination_key
        UNIQUE (notification_id, channel, destination, window_start),
    ADD CONSTRAINT delivery_logs_notification_id_fkey
        FOREIGN KEY (notification_id) REFERENCES consolidated_alerts (id);
CREATE INDEX idx_delivery_logs_alert_id ON delivery_logs (alert_id);
CREATE INDEX idx_delivery_logs_open ON delivery_logs (next_attempt_at)
    WHERE status IN ('PENDING', 'SENDING', 'RETRYING');

ALTER TABLE alert_feedback ADD CONSTRAINT alert_feedback_pkey PRIMARY KEY (id, ts);
CREATE INDEX idx_alert_feedback_alert_id ON alert_feedback (alert_id);
CREATE INDEX idx_alert_feedback_user_id_ts ON alert_feedback (user_id, ts DESC);

COMMENT ON TABLE triggered_alerts IS
    'Every alert of alerts.triggered, once: id is the deterministic alert id, so a replayed '
    'alert is ignored (insert ON CONFLICT (id, triggered_at) DO NOTHING). Partitioned by the '
    'UTC month of triggered_at (triggered_alerts_pYYYY_MM, triggered_alerts_default).';
COMMENT ON TABLE delivery_logs IS
    'The delivery outbox: one row per (notification, channel, destination), written PENDING '
    'before the send; a notification is sent again only while its row is not DELIVERED. '
    'Partitioned by the UTC month of window_start (delivery_logs_pYYYY_MM, delivery_logs_default).';
COMMENT ON TABLE alert_feedback IS
    'Every alerts.feedback event, once: id is deterministic, so a replayed event is ignored '
    '(INSERT ON CONFLICT DO NOTHING). No foreign key to triggered_alerts: feedback may be '
    'stored before its alert. Partitioned by the UTC month of ts (alert_feedback_pYYYY_MM, '
    'alert_feedback_default).';
COMMENT ON COLUMN delivery_logs.window_start IS
    'The notification''s window_start (event time): the partition key, part of the unique key '
    '(notification_id, channel, destination, window_start), the same for every replay.';
COMMENT ON COLUMN delivery_logs.alert_id IS
    'Platform column; deliveries are per notification (notification_id), so usually NULL. No '
    'foreign key since triggered_alerts is partitioned (its key is (id, triggered_at)).';

-- ---------------------------------------------------------------------------- views and grants

DO $views$
DECLARE
    saved record;
BEGIN
    FOR saved IN SELECT * FROM saved_views ORDER BY oid LOOP
        IF to_regclass(quote_ident(saved.relname)) IS NULL THEN
            EXECUTE format('CREATE VIEW %I AS %s', saved.relname, saved.definition);
            EXECUTE format('COMMENT ON VIEW %I IS %L', saved.relname, saved.remark);
            EXECUTE format('GRANT SELECT ON %I TO smart_alerts_analyst', saved.relname);
        END IF;
    END LOOP;
END
$views$;

GRANT SELECT, INSERT, UPDATE, DELETE ON triggered_alerts, delivery_logs, alert_feedback
    TO smart_alerts_writer;
GRANT SELECT ON triggered_alerts, alert_feedback TO smart_alerts_analyst;
GRANT SELECT (id, alert_id, channel, status, delivered_at, error_message, retry_count,
              notification_id, attempts, provider_message_id, last_attempt_at, next_attempt_at,
              created_at, updated_at, secret_ref, claimed_until, provider, window_start)
    ON delivery_logs TO smart_alerts_analyst;
