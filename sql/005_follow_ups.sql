-- 005_follow_ups: a notification row never changes once sent. Alerts that reach its window
-- after it was sent (late, or re-emitted after a crash) go out in a follow-up notification of
-- their own, which points at the first. A notification too old to push by the time it would be
-- sent is recorded STALE on its push channels (and shown in the in-app feed).

ALTER TABLE consolidated_alerts
    ADD COLUMN follow_up_of uuid REFERENCES consolidated_alerts (id);
CREATE INDEX idx_consolidated_alerts_follow_up_of ON consolidated_alerts (follow_up_of)
    WHERE follow_up_of IS NOT NULL;

COMMENT ON COLUMN consolidated_alerts.follow_up_of IS
    'For a follow-up: the notification of the same window sent first. Each alert of a window is '
    'in exactly one of the window''s notification and its follow-ups.';

ALTER TABLE delivery_logs DROP CONSTRAINT delivery_logs_status_check;
ALTER TABLE delivery_logs ADD CONSTRAINT delivery_logs_status_check
    CHECK (status IN ('PENDING', 'SENDING', 'RETRYING', 'DELIVERED', 'FAILED', 'STALE'));

COMMENT ON COLUMN delivery_logs.status IS
    'PENDING (recorded, not sent), SENDING, RETRYING (failed, will retry), DELIVERED, FAILED '
    '(gave up), STALE (not pushed: older than its priority''s age limit when it would have been '
    'sent; error_message says by how much).';
