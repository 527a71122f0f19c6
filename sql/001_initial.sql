-- 001_initial: the platform's history schema (ARCHITECTURE.md §8), extended for the guarantees of §2.
--
-- Conventions
-- * Keys: every table keeps its UUID primary key. Wire ids (rule, user, alert, notification ids)
--   may be any string; the key is pipeline.ids.storage_uuid(kind, wire_id): the id itself when it
--   is a UUID, else UUIDv5(NAMESPACE, '<kind>|<wire id>'). The wire id is stored beside the key
--   (external_id, user_external_id) so analysts can join on either.
-- * Time: every timestamp column is timestamptz. Every time in this system is a UTC instant
--   (message timestamps are RFC 3339 UTC); `timestamp` (without time zone) would silently shift
--   them by the session's TimeZone on input and output.
-- * Idempotence: the writer replays batches after a crash; every table has the deterministic key
--   the writer upserts on, so a replay leaves the same rows.
-- * Symbols are varchar(32), the wire limit: an OCC option symbol ('AAPL  260117C00200000') is
--   21 characters and does not fit the platform's original varchar(20).

-- ---------------------------------------------------------------------------- alert_rules

CREATE TABLE alert_rules (
    id               uuid PRIMARY KEY,
    user_id          uuid,
    name             varchar(255),
    symbol           varchar(32),
    priority         varchar(20) DEFAULT 'MEDIUM'
                     CONSTRAINT alert_rules_priority_check
                     CHECK (priority IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    is_active        boolean DEFAULT true,
    cooldown_minutes int DEFAULT 5,
    expires_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- extensions
    external_id      text NOT NULL CONSTRAINT alert_rules_external_id_key UNIQUE,
    user_external_id text,
    version          int NOT NULL DEFAULT 1,
    mode             text CONSTRAINT alert_rules_mode_check CHECK (mode IN ('once', 'recurring')),
    symbols          text[],
    channels         text[],
    conditions       jsonb,
    cooldown_seconds int,
    deleted_at       timestamptz
);
CREATE INDEX idx_alert_rules_user_id ON alert_rules (user_id);
CREATE INDEX idx_alert_rules_symbol ON alert_rules (symbol);

COMMENT ON TABLE alert_rules IS
    'One row per rule id, the latest version seen on alerts.rules (last write wins, like the '
    'compacted topic). Rows are never deleted: a tombstone sets deleted_at and is_active = false, '
    'because triggered_alerts references the rule. A row with conditions IS NULL is a placeholder '
    'inserted by an alert that arrived before its rule; the rule overwrites it.';
COMMENT ON COLUMN alert_rules.id IS
    'storage_uuid(''rule'', external_id): the wire id itself if it is a UUID, else UUIDv5.';
COMMENT ON COLUMN alert_rules.external_id IS 'The rule id on the wire (alerts.rules key, "id").';
COMMENT ON COLUMN alert_rules.user_id IS 'storage_uuid(''user'', user_external_id).';
COMMENT ON COLUMN alert_rules.user_external_id IS 'The owner''s user id on the wire.';
COMMENT ON COLUMN alert_rules.symbol IS
    'The single symbol watched; NULL for a watchlist (symbols) or a wildcard rule (both NULL).';
COMMENT ON COLUMN alert_rules.symbols IS 'The watchlist; NULL unless the rule watches several.';
COMMENT ON COLUMN alert_rules.version IS 'The rule version on the wire (part of alert ids).';
COMMENT ON COLUMN alert_rules.mode IS 'once (deactivates after firing) or recurring.';
COMMENT ON COLUMN alert_rules.channels IS 'Channel override of the rule; NULL: profile routing.';
COMMENT ON COLUMN alert_rules.conditions IS
    'The full condition tree as on the wire (nested {"all": [...]} / {"any": [...]} / leaves); '
    'alert_conditions has one row per leaf.';
COMMENT ON COLUMN alert_rules.cooldown_minutes IS
    'cooldown_seconds rounded up to whole minutes (the platform column); see cooldown_seconds.';
COMMENT ON COLUMN alert_rules.cooldown_seconds IS 'The exact cooldown of the rule, in seconds.';
COMMENT ON COLUMN alert_rules.deleted_at IS
    'When the writer saw the rule''s tombstone (wall clock); NULL while the rule exists.';

-- ---------------------------------------------------------------------------- alert_conditions

CREATE TABLE alert_conditions (
    id                  uuid PRIMARY KEY,
    rule_id             uuid REFERENCES alert_rules (id) ON DELETE CASCADE,
    condition_type      varchar(50),
    threshold           decimal(15, 4),
    comparison          varchar(20),
    time_window_minutes int,
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- extensions
    position            int NOT NULL,
    params              jsonb NOT NULL
);
CREATE INDEX idx_alert_conditions_rule_id ON alert_conditions (rule_id);

COMMENT ON TABLE alert_conditions IS
    'One row per leaf condition of the current version of a rule (depth-first order in '
    'position); replaced whenever the rule changes. The tree itself is alert_rules.conditions.';
COMMENT ON COLUMN alert_conditions.id IS 'UUIDv5 of (rule wire id, position).';
COMMENT ON COLUMN alert_conditions.threshold IS
    'The leaf''s "threshold" parameter if it has one (NULL if absent or beyond decimal(15,4)).';
COMMENT ON COLUMN alert_conditions.comparison IS
    'above, below, crosses_above or crosses_below, derived from the condition type; NULL if none.';
COMMENT ON COLUMN alert_conditions.time_window_minutes IS
    'The leaf''s window_seconds rounded up to whole minutes, if it has one.';
COMMENT ON COLUMN alert_conditions.params IS 'The leaf condition exactly as on the wire.';

-- ---------------------------------------------------------------------------- triggered_alerts

CREATE TABLE triggered_alerts (
    id               uuid PRIMARY KEY,
    rule_id          uuid REFERENCES alert_rules (id),
    user_id          uuid,
    symbol           varchar(32),
    priority         varchar(20)
                     CONSTRAINT triggered_alerts_priority_check
                     CHECK (priority IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    title            varchar(255),
    message          text,
    triggered_at     timestamptz,
    acknowledged_at  timestamptz,
    status           varchar(20) DEFAULT 'PENDING',
    -- extensions
    external_id      text NOT NULL,
    user_external_id text,
    rule_version     int,
    condition_types  text[],
    "values"         jsonb,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_triggered_alerts_user_id ON triggered_alerts (user_id);
CREATE INDEX idx_triggered_alerts_status ON triggered_alerts (status);
CREATE INDEX idx_triggered_alerts_triggered_at ON triggered_alerts (triggered_at);
CREATE INDEX idx_triggered_alerts_rule_id_triggered_at ON triggered_alerts (rule_id, triggered_at);

COMMENT ON TABLE triggered_alerts IS
    'Every alert of alerts.triggered, once: id is the deterministic alert id, so a replayed '
    'alert is ignored (insert ON CONFLICT (id) DO NOTHING).';
COMMENT ON COLUMN triggered_alerts.id IS
    'The alert id: UUIDv5 of (rule id, rule version, triggering event ts, symbol), '
    'i.e. storage_uuid(''alert'', external_id).';
COMMENT ON COLUMN triggered_alerts.external_id IS 'The alert id on the wire (alert_id).';
COMMENT ON COLUMN triggered_alerts.rule_id IS 'alert_rules.id = storage_uuid(''rule'', rule wire id).';
COMMENT ON COLUMN triggered_alerts.user_id IS 'storage_uuid(''user'', user_external_id).';
COMMENT ON COLUMN triggered_alerts.user_external_id IS 'The user id on the wire.';
COMMENT ON COLUMN triggered_alerts.triggered_at IS
    'Event time of the trigger (the event''s ts, or a bar''s end), not the wall clock.';
COMMENT ON COLUMN triggered_alerts.rule_version IS 'The rule version that fired.';
COMMENT ON COLUMN triggered_alerts."values" IS
    'The values that made the conditions true, as on the wire. VALUES is an SQL keyword: quote '
    'the column ("values") or use v_alerts.alert_values.';
COMMENT ON COLUMN triggered_alerts.created_at IS 'When the row was first written (wall clock).';

-- ---------------------------------------------------------------------------- consolidated_alerts

CREATE TABLE consolidated_alerts (
    id                   uuid PRIMARY KEY,
    user_id              uuid,
    alert_ids            uuid[],
    consolidated_title   varchar(255),
    consolidated_message text,
    highest_priority     varchar(20)
                         CONSTRAINT consolidated_alerts_highest_priority_check
                         CHECK (highest_priority IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    created_at           timestamptz NOT NULL DEFAULT now(),
    -- extensions
    external_id          text NOT NULL,
    user_external_id     text,
    window_start         timestamptz,
    window_end           timestamptz,
    channels             text[],
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_consolidated_alerts_user_id_window_start
    ON consolidated_alerts (user_id, window_start);

COMMENT ON TABLE consolidated_alerts IS
    'Notifications (alerts.notifications). id is the deterministic notification id, which '
    'already encodes (user, window start, kind): a window re-emitted with more alerts upserts '
    'the same row (ON CONFLICT (id) DO UPDATE, last emission wins).';
COMMENT ON COLUMN consolidated_alerts.id IS
    'The notification id: UUIDv5 of (kind, user, window start), '
    'i.e. storage_uuid(''notification'', external_id).';
COMMENT ON COLUMN consolidated_alerts.external_id IS 'The notification id on the wire.';
COMMENT ON COLUMN consolidated_alerts.alert_ids IS
    'triggered_alerts.id of each alert in the notification (storage_uuid(''alert'', wire id)).';
COMMENT ON COLUMN consolidated_alerts.user_id IS 'storage_uuid(''user'', user_external_id).';
COMMENT ON COLUMN consolidated_alerts.user_external_id IS 'The user id on the wire.';
COMMENT ON COLUMN consolidated_alerts.window_start IS 'Event-time start of the window.';
COMMENT ON COLUMN consolidated_alerts.window_end IS 'Event-time end of the window.';
COMMENT ON COLUMN consolidated_alerts.channels IS 'Channels the notification is routed to.';

-- ---------------------------------------------------------------------------- delivery_logs

CREATE TABLE delivery_logs (
    id                  uuid PRIMARY KEY,
    alert_id            uuid REFERENCES triggered_alerts (id),
    channel             varchar(20) NOT NULL,
    status              varchar(20) NOT NULL DEFAULT 'PENDING'
                        CONSTRAINT delivery_logs_status_check
                        CHECK (status IN ('PENDING', 'SENDING', 'RETRYING', 'DELIVERED', 'FAILED')),
    delivered_at        timestamptz,
    error_message       text,
    retry_count         int NOT NULL DEFAULT 0,
    -- extensions
    notification_id     uuid REFERENCES consolidated_alerts (id),
    destination         text NOT NULL,
    attempts            int NOT NULL DEFAULT 0,
    provider_message_id text,
    last_attempt_at     timestamptz,
    next_attempt_at     timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delivery_logs_notification_channel_destination_key
        UNIQUE (notification_id, channel, destination)
);
CREATE INDEX idx_delivery_logs_alert_id ON delivery_logs (alert_id);
CREATE INDEX idx_delivery_logs_open ON delivery_logs (next_attempt_at)
    WHERE status IN ('PENDING', 'SENDING', 'RETRYING');

COMMENT ON TABLE delivery_logs IS
    'The delivery outbox: one row per (notification, channel, destination), written PENDING '
    'before the send; a notification is sent again only while its row is not DELIVERED.';
COMMENT ON COLUMN delivery_logs.id IS
    'UUIDv5 of (notification wire id, channel, destination): replays find the same row.';
COMMENT ON COLUMN delivery_logs.alert_id IS
    'Platform column; deliveries are per notification (notification_id), so usually NULL.';
COMMENT ON COLUMN delivery_logs.notification_id IS 'consolidated_alerts.id of what is delivered.';
COMMENT ON COLUMN delivery_logs.destination IS
    'Where it goes: an e-mail address, a phone number, a push token, a webhook URL, an in-app feed.';
COMMENT ON COLUMN delivery_logs.status IS
    'PENDING (recorded, not sent), SENDING, RETRYING (failed, will retry), DELIVERED, FAILED (gave up).';
COMMENT ON COLUMN delivery_logs.attempts IS 'Finished send attempts, successful or not.';
COMMENT ON COLUMN delivery_logs.retry_count IS 'Failed attempts that were scheduled for a retry.';
COMMENT ON COLUMN delivery_logs.provider_message_id IS 'The provider''s id of the sent message.';
COMMENT ON COLUMN delivery_logs.next_attempt_at IS 'When a RETRYING delivery may be tried again.';

-- ---------------------------------------------------------------------------- user_alert_profiles

CREATE TABLE user_alert_profiles (
    id                 uuid PRIMARY KEY,
    user_id            uuid CONSTRAINT idx_user_alert_profiles_user_id UNIQUE,
    preferred_channels text[],
    quiet_hours_start  time,
    quiet_hours_end    time,
    action_history     jsonb,
    relevance_scores   jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- extensions
    user_external_id   text CONSTRAINT user_alert_profiles_user_external_id_key UNIQUE,
    timezone           text,
    channels           jsonb,
    digest_seconds     int,
    max_per_hour       int,
    min_relevance      double precision,
    destinations       jsonb
);
-- The index user_alert_profiles(user_id) of §8 is the unique constraint's index (same name).

COMMENT ON TABLE user_alert_profiles IS
    'One row per user: the latest users.profiles message, and the learnt relevance scores. '
    'A row created by relevance scores before any profile has NULL profile columns.';
COMMENT ON COLUMN user_alert_profiles.id IS 'Equal to user_id (one profile per user).';
COMMENT ON COLUMN user_alert_profiles.user_id IS 'storage_uuid(''user'', user_external_id).';
COMMENT ON COLUMN user_alert_profiles.user_external_id IS 'The user id on the wire.';
COMMENT ON COLUMN user_alert_profiles.preferred_channels IS
    'Every channel of the profile''s routing, in order of first use from LOW to CRITICAL.';
COMMENT ON COLUMN user_alert_profiles.channels IS
    'Channels per priority as on the wire: {"LOW": [..], "MEDIUM": [..], ...}.';
COMMENT ON COLUMN user_alert_profiles.quiet_hours_start IS
    'Local wall-clock time in the profile''s timezone (hence time without time zone).';
COMMENT ON COLUMN user_alert_profiles.quiet_hours_end IS
    'Local wall-clock time in the profile''s timezone (hence time without time zone).';
COMMENT ON COLUMN user_alert_profiles.timezone IS 'IANA time zone of the user.';
COMMENT ON COLUMN user_alert_profiles.destinations IS
    'Where channels deliver: {"email", "phone", "push_tokens", "webhook": {url, secret_ref}}.';
COMMENT ON COLUMN user_alert_profiles.relevance_scores IS
    'Learnt scores in [0, 1] per dimension and key: {"symbol": {"AAPL": 0.62}}; merged per key.';
COMMENT ON COLUMN user_alert_profiles.action_history IS 'Platform column; not written by the job.';
