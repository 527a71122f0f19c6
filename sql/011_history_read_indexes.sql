-- 011_history_read_indexes: a user's newest alerts, as the API's alert list (and analysts) read
-- them: WHERE user_id = ? ORDER BY triggered_at DESC, id DESC LIMIT n walks this index and
-- stops after n rows, instead of reading and sorting all of the user's alerts.

CREATE INDEX idx_triggered_alerts_user_id_triggered_at
    ON triggered_alerts (user_id, triggered_at DESC, id DESC);
