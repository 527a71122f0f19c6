-- 003_alert_outcomes: what became of each alert once personalization decided (issue 4).
-- Kept apart from triggered_alerts so the decision can be recorded whichever of the two writes
-- reaches PostgreSQL first, and upserted on the alert id like every other table.

CREATE TABLE alert_outcomes (
    alert_id                 uuid PRIMARY KEY,
    alert_external_id        text NOT NULL,
    user_id                  uuid,
    user_external_id         text,
    status                   varchar(20) NOT NULL
                             CONSTRAINT alert_outcomes_status_check
                             CHECK (status IN ('NOTIFIED', 'STALE', 'MUTED', 'DEFERRED')),
    notification_id          uuid,
    notification_external_id text,
    decided_at               timestamptz NOT NULL,
    updated_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_alert_outcomes_user_id_status ON alert_outcomes (user_id, status);
CREATE INDEX idx_alert_outcomes_notification_id ON alert_outcomes (notification_id);

COMMENT ON TABLE alert_outcomes IS
    'One row per alert: NOTIFIED (in exactly one notification, notification_id), STALE (older '
    'than its priority''s staleness limit when its window closed: stored, not pushed), MUTED '
    '(its rule or symbol was muted by the user) or DEFERRED (over the hourly budget, waiting '
    'for the next notification; later rows replace it). The latest decision wins.';
COMMENT ON COLUMN alert_outcomes.alert_id IS 'triggered_alerts.id (the deterministic alert id).';
COMMENT ON COLUMN alert_outcomes.user_id IS
    'storage_uuid(''user'', user_external_id): the wire id itself if it is a UUID, else UUIDv5.';
COMMENT ON COLUMN alert_outcomes.user_external_id IS 'The user id as on the wire.';
COMMENT ON COLUMN alert_outcomes.decided_at IS 'Event time of the decision (the window close).';

GRANT SELECT, INSERT, UPDATE ON alert_outcomes TO smart_alerts_writer;
GRANT SELECT ON alert_outcomes TO smart_alerts_analyst;
