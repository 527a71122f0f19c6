-- 012_feedback_and_status: every alerts.feedback event in PostgreSQL, the alert's status following
-- its life, and the relevance scores' history (issue 15).
--
-- Status of an alert (triggered_alerts.status), by rank; a status only ever moves to a higher
-- rank, so the order in which the writes arrive (an alert row after its outcome, a delivery
-- report after the user acted, a replay) never moves it back and always ends on the same value:
--   0 PENDING    stored, personalization has not decided yet
--   1 BUDGETED   over the user's hourly budget, waiting for the next notification (DEFERRED)
--   2 NOTIFIED   in a notification            } personalization's decision (alert_outcomes);
--   2 STALE      too old to push, stored      } a later decision of the same rank replaces an
--   2 MUTED      its rule or symbol is muted  } earlier one, as in alert_outcomes
--   3 DELIVERED  a channel delivered its notification, or a `delivered` feedback
--   4 OPENED     an `opened` feedback
--   5 DISMISSED  a `dismissed` feedback
--   6 ACTED      an `acted` feedback (the API's acknowledge publishes one)
-- `snoozed`, `muted` and `unmuted` feedback is stored but moves no status.

CREATE FUNCTION alert_status_rank(status text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE status
    WHEN 'PENDING' THEN 0 WHEN 'BUDGETED' THEN 1
    WHEN 'NOTIFIED' THEN 2 WHEN 'STALE' THEN 2 WHEN 'MUTED' THEN 2
    WHEN 'DELIVERED' THEN 3 WHEN 'OPENED' THEN 4 WHEN 'DISMISSED' THEN 5 WHEN 'ACTED' THEN 6
END;

COMMENT ON FUNCTION alert_status_rank(text) IS
    'The order of triggered_alerts.status: a status only moves to a higher rank (docs/contracts.md).';

CREATE FUNCTION alert_status_forward(current text, candidate text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN alert_status_rank(candidate) > alert_status_rank(coalesce(current, 'PENDING'))
            THEN candidate ELSE coalesce(current, 'PENDING') END;

COMMENT ON FUNCTION alert_status_forward(text, text) IS
    'The status after candidate reached an alert in status current: the higher ranked of the two.';

-- The status a feedback action moves an alert to (NULL: none).
CREATE FUNCTION feedback_status(action text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE action
    WHEN 'delivered' THEN 'DELIVERED' WHEN 'opened' THEN 'OPENED'
    WHEN 'dismissed' THEN 'DISMISSED' WHEN 'acted' THEN 'ACTED'
END;

COMMENT ON FUNCTION feedback_status(text) IS
    'The triggered_alerts.status a feedback action leads to; NULL for snoozed, muted, unmuted.';

ALTER TABLE triggered_alerts ADD CONSTRAINT triggered_alerts_status_check
    CHECK (status IN ('PENDING', 'BUDGETED', 'NOTIFIED', 'STALE', 'MUTED', 'DELIVERED', 'OPENED',
                      'DISMISSED', 'ACTED'));

COMMENT ON COLUMN triggered_alerts.status IS
    'Where the alert is in its life: PENDING, BUDGETED, NOTIFIED / STALE / MUTED, DELIVERED, '
    'OPENED, DISMISSED, ACTED; only ever moves forward (alert_status_rank; docs/contracts.md).';
COMMENT ON COLUMN triggered_alerts.acknowledged_at IS
    'When the user acted on the alert: the ts of its first acted feedback, or the time the API''s '
    'acknowledge stamped (which publishes that acted feedback); set once.';

-- ---------------------------------------------------------------------------- alert_feedback

CREATE TABLE alert_feedback (
    id                uuid NOT NULL,
    ts                timestamptz NOT NULL,
    user_id           uuid NOT NULL,
    user_external_id  text NOT NULL,
    alert_id          uuid NOT NULL,
    alert_external_id text NOT NULL,
    action            text NOT NULL CONSTRAINT alert_feedback_action_check
                      CHECK (action IN ('delivered', 'opened', 'acted', 'dismissed', 'snoozed',
                                        'muted', 'unmuted')),
    symbol            varchar(32),
    condition_type    varchar(64),
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    -- The month partitioning of migration 014 needs the partition key (ts) in every unique key.
    CONSTRAINT alert_feedback_pkey PRIMARY KEY (id, ts)
);
CREATE INDEX idx_alert_feedback_alert_id ON alert_feedback (alert_id);
CREATE INDEX idx_alert_feedback_user_id_ts ON alert_feedback (user_id, ts DESC);

COMMENT ON TABLE alert_feedback IS
    'Every alerts.feedback event, once: id is deterministic, so a replayed event is ignored '
    '(INSERT ON CONFLICT DO NOTHING). No foreign key to triggered_alerts: feedback may be '
    'stored before its alert (another partition, another worker).';
COMMENT ON COLUMN alert_feedback.id IS
    'UUIDv5(namespace, ''feedback|<user id>|<alert id>|<action>|<ts>'') of the wire values, ts '
    'as RFC 3339 UTC with microseconds (2026-01-05T14:30:00.125000Z).';
COMMENT ON COLUMN alert_feedback.ts IS 'Event time of the feedback (the message''s ts).';
COMMENT ON COLUMN alert_feedback.user_id IS 'storage_uuid(''user'', user_external_id).';
COMMENT ON COLUMN alert_feedback.user_external_id IS 'The user id on the wire.';
COMMENT ON COLUMN alert_feedback.alert_external_id IS 'The alert id on the wire.';
COMMENT ON COLUMN alert_feedback.alert_id IS
    'storage_uuid(''alert'', alert_external_id) = triggered_alerts.id of the alert it names.';
COMMENT ON COLUMN alert_feedback.symbol IS 'The symbol the feedback names, if it names one.';
COMMENT ON COLUMN alert_feedback.condition_type IS 'The condition type it names, if any.';
COMMENT ON COLUMN alert_feedback.recorded_at IS 'When the row was written (wall clock).';

COMMENT ON COLUMN user_alert_profiles.action_history IS
    'The user''s feedback per action over the alert_feedback rows kept: '
    '{"opened": {"count": 12, "last_at": "2026-01-05T14:30:00+00:00"}, ...}; rewritten from '
    'alert_feedback whenever the user''s feedback gets a new row.';

-- Alerts of a notification, when an alert row arrives after its notification was delivered.
CREATE INDEX idx_consolidated_alerts_alert_ids ON consolidated_alerts USING gin (alert_ids);

-- ---------------------------------------------------------------------------- relevance_score_history

CREATE TABLE relevance_score_history (
    user_id          uuid NOT NULL,
    user_external_id text NOT NULL,
    dimension        text NOT NULL,
    key              text NOT NULL,
    updated_at       timestamptz NOT NULL,
    score            double precision NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT relevance_score_history_pkey PRIMARY KEY (user_id, dimension, key, updated_at)
);

COMMENT ON TABLE relevance_score_history IS
    'Every change of a learnt relevance score, as published: one row per (user, dimension, key, '
    'event time of the update). user_alert_profiles.relevance_scores holds the latest only.';
COMMENT ON COLUMN relevance_score_history.user_id IS 'storage_uuid(''user'', user_external_id).';
COMMENT ON COLUMN relevance_score_history.user_external_id IS 'The user id on the wire.';
COMMENT ON COLUMN relevance_score_history.dimension IS 'symbol or condition_type.';
COMMENT ON COLUMN relevance_score_history.key IS 'The symbol or the condition type.';
COMMENT ON COLUMN relevance_score_history.updated_at IS
    'Event time of the update; the score decays toward 0.5 after it (docs/personalization.md).';
COMMENT ON COLUMN relevance_score_history.score IS 'The score in [0, 1] as of updated_at.';

-- Rows stored before this migration: their status from what personalization decided.
UPDATE triggered_alerts t
SET status = CASE o.status WHEN 'DEFERRED' THEN 'BUDGETED' ELSE o.status END
FROM alert_outcomes o
WHERE o.alert_id = t.id AND t.status = 'PENDING';

GRANT SELECT, INSERT, UPDATE, DELETE ON alert_feedback, relevance_score_history
    TO smart_alerts_writer;
GRANT SELECT ON alert_feedback, relevance_score_history TO smart_alerts_analyst;
