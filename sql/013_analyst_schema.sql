-- 013_analyst_schema: views that answer analysts' questions, the indexes they need, and contact
-- details that the analyst role reads only masked (issue 15 point 2).

-- ---------------------------------------------------------------------------- indexes

-- Alerts stored before the writer kept the user's wire id on every row take their rule's.
UPDATE triggered_alerts t SET user_external_id = r.user_external_id
FROM alert_rules r
WHERE t.user_external_id IS NULL AND r.id = t.rule_id AND r.user_external_id IS NOT NULL;

-- A user's newest alerts by wire id (v_alerts.user_external_id), as by user_id in 011.
CREATE INDEX idx_triggered_alerts_user_external_id_triggered_at
    ON triggered_alerts (user_external_id, triggered_at DESC);
-- Per-symbol questions (most dismissed symbols), newest first.
CREATE INDEX idx_triggered_alerts_symbol_triggered_at ON triggered_alerts (symbol, triggered_at);

-- v_alerts filtered on user_external_id went through coalesce(alert's, rule's), which no index
-- serves; the writer sets the alert's own on every row (and the UPDATE above on old ones).
CREATE OR REPLACE VIEW v_alerts AS
SELECT
    t.id                                          AS alert_id,
    t.external_id                                 AS alert_external_id,
    t.rule_id,
    r.external_id                                 AS rule_external_id,
    r.name                                        AS rule_name,
    t.rule_version,
    t.user_id,
    t.user_external_id,
    t.symbol,
    t.priority,
    t.title,
    t.message,
    t.triggered_at,
    t.acknowledged_at,
    t.status,
    t.condition_types,
    t."values"                                    AS alert_values,
    t.created_at
FROM triggered_alerts AS t
LEFT JOIN alert_rules AS r ON r.id = t.rule_id;

-- ---------------------------------------------------------------------------- masking
-- The rules of pipeline/masking.py, in SQL (tests/integration/test_history_analyst.py checks
-- that both give the same text for the same input).

CREATE FUNCTION mask_email(email text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN strpos(email, '@') = 0 THEN '***'
            ELSE left(substring(email FROM '^(.*)@'), 1) || '***@'
                 || substring(email FROM '@([^@]*)$') END;

CREATE FUNCTION mask_phone(phone text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN left(phone, 2) || repeat('*', greatest(length(phone) - 6, 3)) || right(phone, 4);

CREATE FUNCTION mask_token(token text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN '***' || right(token, 4);

-- urllib.parse.urlsplit's reading of scheme, authority, path and query, then mask_url's rule:
-- no password, no query, and for http(s)/ws(s) nothing after the host.
CREATE FUNCTION mask_url(url text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    parts    text[];
    scheme   text;
    netloc   text;
    path     text;
    query    text;
    userinfo text;
    hostport text;
    host     text;
    port     text;
    username text;
    password text;
    shown    text;
BEGIN
    parts := regexp_match(url, '^([A-Za-z][A-Za-z0-9+.-]*):(//([^/?#]*))?([^?#]*)(\?([^#]*))?');
    IF parts IS NULL THEN
        RETURN '***';
    END IF;
    scheme := lower(parts[1]);
    netloc := coalesce(parts[3], '');
    path := parts[4];
    query := coalesce(parts[6], '');
    IF strpos(netloc, '@') > 0 THEN
        userinfo := substring(netloc FROM '^(.*)@');
        hostport := substring(netloc FROM '@([^@]*)$');
        IF strpos(userinfo, ':') > 0 THEN
            username := split_part(userinfo, ':', 1);
            password := substring(userinfo FROM ':(.*)$');
        ELSE
            username := userinfo;
        END IF;
    ELSE
        hostport := netloc;
    END IF;
    IF (strpos(netloc, '[') > 0) <> (strpos(netloc, ']') > 0) THEN
        RETURN '***';  -- urlsplit: Invalid IPv6 URL
    END IF;
    IF left(hostport, 1) = '[' THEN
        host := substring(hostport FROM '^\[([^\]]*)\]');
        port := substring(hostport FROM '^\[[^\]]*\]:(.*)$');
    ELSIF strpos(hostport, ':') > 0 THEN
        host := split_part(hostport, ':', 1);
        port := substring(hostport FROM ':(.*)$');
    ELSE
        host := hostport;
    END IF;
    host := lower(coalesce(host, ''));
    IF port = '' THEN
        port := NULL;
    END IF;
    IF port IS NOT NULL AND (port !~ '^[0-9]+$' OR port::numeric > 65535) THEN
        RETURN '***';  -- urlsplit: the port is not a number in range
    END IF;
    shown := CASE WHEN strpos(host, ':') > 0 THEN '[' || host || ']' ELSE host END;
    IF port IS NOT NULL THEN
        shown := shown || ':' || port::numeric::text;
    END IF;
    IF coalesce(username, '') <> '' OR password IS NOT NULL THEN
        shown := coalesce(username, '')
                 || CASE WHEN password IS NOT NULL THEN ':***' ELSE '' END || '@' || shown;
    END IF;
    IF scheme IN ('http', 'https', 'ws', 'wss') THEN
        RETURN scheme || '://' || shown
               || CASE WHEN btrim(path, '/') <> '' OR query <> '' THEN '/…' ELSE '' END;
    END IF;
    RETURN scheme || '://' || shown || path || CASE WHEN query <> '' THEN '?…' ELSE '' END;
END
$$;

CREATE FUNCTION mask_destination(channel text, destination text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE channel
    WHEN 'email' THEN mask_email(destination)
    WHEN 'sms' THEN mask_phone(destination)
    WHEN 'voice' THEN mask_phone(destination)
    WHEN 'push' THEN mask_token(destination)
    WHEN 'webhook' THEN mask_url(destination)
    ELSE destination
END;

COMMENT ON FUNCTION mask_email(text) IS 'a***@example.com: pipeline.masking.mask_email in SQL.';
COMMENT ON FUNCTION mask_phone(text) IS '+1******4567: pipeline.masking.mask_phone in SQL.';
COMMENT ON FUNCTION mask_token(text) IS '***cdef: pipeline.masking.mask_token in SQL.';
COMMENT ON FUNCTION mask_url(text) IS
    'https://hooks.example.com/…: pipeline.masking.mask_url in SQL.';
COMMENT ON FUNCTION mask_destination(text, text) IS
    'A delivery''s destination as the log shows it: pipeline.masking.mask_destination in SQL.';

-- ---------------------------------------------------------------------------- the provider

ALTER TABLE delivery_logs ADD COLUMN provider text;
COMMENT ON COLUMN delivery_logs.provider IS
    'The provider of the last attempt (fcm, sendgrid, smtp, twilio, twilio-voice, webhook), set '
    'when an attempt claims the row; in_app for the in-app feed; NULL: never attempted.';

-- ---------------------------------------------------------------------------- masked views

CREATE VIEW v_user_contacts AS
SELECT
    p.user_id,
    p.user_external_id,
    p.timezone,
    p.preferred_channels,
    mask_email(p.destinations ->> 'email')                                     AS email,
    mask_phone(p.destinations ->> 'phone')                                     AS phone,
    (SELECT array_agg(mask_token(token) ORDER BY n)
     FROM jsonb_array_elements_text(
              CASE WHEN jsonb_typeof(p.destinations -> 'push_tokens') = 'array'
                   THEN p.destinations -> 'push_tokens' END)
          WITH ORDINALITY AS tokens (token, n))                                AS push_tokens,
    (SELECT array_agg(mask_url(hook ->> 'url') ORDER BY n)
     FROM jsonb_array_elements(
              CASE WHEN jsonb_typeof(p.destinations -> 'webhook') = 'object'
                   THEN jsonb_build_array(p.destinations -> 'webhook') ELSE '[]' END
              || CASE WHEN jsonb_typeof(p.destinations -> 'webhooks') = 'array'
                      THEN p.destinations -> 'webhooks' ELSE '[]' END)
          WITH ORDINALITY AS hooks (hook, n))                                  AS webhooks,
    p.updated_at
FROM user_alert_profiles AS p;

COMMENT ON VIEW v_user_contacts IS
    'Each user''s contact details masked as in the log (mask_email, mask_phone, mask_token, '
    'mask_url): which domain, country code and last digits, host; never the usable value.';

CREATE VIEW v_deliveries AS
SELECT
    d.id, d.notification_id, d.alert_id, d.channel, d.provider,
    mask_destination(d.channel, d.destination) AS destination,
    d.status, d.attempts, d.retry_count, d.error_message, d.provider_message_id,
    d.created_at, d.last_attempt_at, d.next_attempt_at, d.delivered_at, d.updated_at
FROM delivery_logs AS d;

COMMENT ON VIEW v_deliveries IS 'delivery_logs with the destination masked (mask_destination).';

CREATE VIEW v_disabled_destinations AS
SELECT channel, mask_destination(channel, destination) AS destination, reason, disabled_at
FROM disabled_destinations;

COMMENT ON VIEW v_disabled_destinations IS 'disabled_destinations with the destination masked.';

-- ---------------------------------------------------------------------------- analyst views

CREATE VIEW v_user_daily_alerts AS
SELECT
    t.user_id,
    t.user_external_id,
    coalesce(p.timezone, 'UTC')                                           AS timezone,
    (t.triggered_at AT TIME ZONE coalesce(p.timezone, 'UTC'))::date       AS local_day,
    count(*)                                                              AS alerts,
    count(*) FILTER (WHERE t.priority IN ('HIGH', 'CRITICAL'))            AS high_or_critical,
    count(*) FILTER (WHERE t.status IN ('STALE', 'MUTED'))                AS not_pushed
FROM triggered_alerts AS t
LEFT JOIN user_alert_profiles AS p ON p.user_id = t.user_id
GROUP BY 1, 2, 3, 4;

COMMENT ON VIEW v_user_daily_alerts IS
    'Alerts per user and local day: the day of triggered_at in the user''s profile timezone '
    '(UTC without a profile).';

CREATE VIEW v_delivery_success AS
SELECT
    d.channel,
    coalesce(d.provider, CASE WHEN d.channel = 'in_app' THEN 'in_app' ELSE 'none' END) AS provider,
    count(*) FILTER (WHERE d.status IN ('DELIVERED', 'FAILED'))   AS finished,
    count(*) FILTER (WHERE d.status = 'DELIVERED')                AS delivered,
    count(*) FILTER (WHERE d.status = 'FAILED')                   AS failed,
    count(*) FILTER (WHERE d.status = 'STALE')                    AS stale,
    count(*) FILTER (WHERE d.status IN ('PENDING', 'SENDING', 'RETRYING')) AS open,
    round(count(*) FILTER (WHERE d.status = 'DELIVERED')::numeric
          / nullif(count(*) FILTER (WHERE d.status IN ('DELIVERED', 'FAILED')), 0), 4)
                                                                  AS success_rate,
    sum(d.attempts)                                               AS attempts
FROM delivery_logs AS d
GROUP BY 1, 2;

COMMENT ON VIEW v_delivery_success IS
    'Per channel and provider: finished deliveries (DELIVERED or FAILED), and success_rate = '
    'delivered / finished. provider none: failed without an attempt (no destination, disabled).';

CREATE VIEW v_alert_responses AS
SELECT
    t.id                                                      AS alert_id,
    t.external_id                                             AS alert_external_id,
    t.rule_id,
    t.user_id,
    t.user_external_id,
    t.symbol,
    t.priority,
    t.status,
    t.triggered_at,
    f.opened_at,
    coalesce(t.acknowledged_at, f.acted_at)                   AS acted_at,
    f.dismissed_at,
    f.opened_at - t.triggered_at                              AS time_to_open,
    coalesce(t.acknowledged_at, f.acted_at) - t.triggered_at  AS time_to_act
FROM triggered_alerts AS t
LEFT JOIN (
    SELECT alert_id,
           min(ts) FILTER (WHERE action IN ('opened', 'acted')) AS opened_at,
           min(ts) FILTER (WHERE action = 'acted')              AS acted_at,
           min(ts) FILTER (WHERE action = 'dismissed')          AS dismissed_at
    FROM alert_feedback
    GROUP BY alert_id
) AS f ON f.alert_id = t.id;

COMMENT ON VIEW v_alert_responses IS
    'Each alert with the first time the user opened it (an opened or acted feedback: acting '
    'opens it), acted on it (acknowledged_at) and dismissed it, and the time from trigger to each.';

CREATE VIEW v_rule_activity AS
SELECT
    a.rule_id,
    r.external_id                                              AS rule_external_id,
    r.name                                                     AS rule_name,
    r.user_external_id,
    count(*)                                                   AS alerts,
    count(DISTINCT (a.triggered_at AT TIME ZONE 'UTC')::date)  AS days_with_alerts,
    round(count(*)::numeric
          / nullif(count(DISTINCT (a.triggered_at AT TIME ZONE 'UTC')::date), 0), 2)
                                                               AS alerts_per_active_day,
    min(a.triggered_at)                                        AS first_alert_at,
    max(a.triggered_at)                                        AS last_alert_at,
    count(a.opened_at)                                         AS opened,
    count(a.acted_at)                                          AS acted,
    count(a.dismissed_at)                                      AS dismissed,
    round(count(a.dismissed_at)::numeric / count(*), 4)        AS dismissed_share,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY a.time_to_open) AS median_time_to_open
FROM v_alert_responses AS a
LEFT JOIN alert_rules AS r ON r.id = a.rule_id
GROUP BY a.rule_id, r.external_id, r.name, r.user_external_id;

COMMENT ON VIEW v_rule_activity IS
    'Per rule: how many alerts (noise), on how many UTC days, and how many were opened, acted '
    'on and dismissed (each alert counted once per kind).';

CREATE VIEW v_symbol_activity AS
SELECT
    a.symbol,
    count(*)                                                   AS alerts,
    count(DISTINCT a.user_id)                                  AS users,
    count(a.opened_at)                                         AS opened,
    count(a.acted_at)                                          AS acted,
    count(a.dismissed_at)                                      AS dismissed,
    round(count(a.dismissed_at)::numeric / count(*), 4)        AS dismissed_share,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY a.time_to_open) AS median_time_to_open
FROM v_alert_responses AS a
GROUP BY a.symbol;

COMMENT ON VIEW v_symbol_activity IS
    'Per symbol: alerts, users alerted, and how many alerts were opened, acted on, dismissed.';

CREATE VIEW v_relevance_history AS
SELECT
    h.user_id,
    h.user_external_id,
    h.dimension,
    h.key,
    h.updated_at,
    h.score,
    h.score - lag(h.score) OVER w AS change
FROM relevance_score_history AS h
WINDOW w AS (PARTITION BY h.user_id, h.dimension, h.key ORDER BY h.updated_at);

COMMENT ON VIEW v_relevance_history IS
    'Every change of a relevance score, with the change from the previous one of the same key.';

-- ---------------------------------------------------------------------------- privileges
-- The analyst reads contact details only through the masked views: the raw columns (a
-- profile's destinations and profile document, a delivery's or disabled destination) are not
-- granted. A view runs with its owner's rights, so the views need no grant on the tables.

REVOKE SELECT ON user_alert_profiles, delivery_logs, disabled_destinations, profile_documents
    FROM smart_alerts_analyst;
GRANT SELECT (id, user_id, user_external_id, preferred_channels, quiet_hours_start,
              quiet_hours_end, action_history, relevance_scores, created_at, updated_at,
              timezone, channels, digest_seconds, max_per_hour, min_relevance)
    ON user_alert_profiles TO smart_alerts_analyst;
GRANT SELECT (id, alert_id, channel, status, delivered_at, error_message, retry_count,
              notification_id, attempts, provider_message_id, last_attempt_at, next_attempt_at,
              created_at, updated_at, secret_ref, claimed_until, provider)
    ON delivery_logs TO smart_alerts_analyst;
GRANT SELECT (channel, reason, disabled_at) ON disabled_destinations TO smart_alerts_analyst;
GRANT SELECT (user_external_id, revision, updated_at, updated_by)
    ON profile_documents TO smart_alerts_analyst;

GRANT SELECT ON v_user_contacts, v_deliveries, v_disabled_destinations, v_user_daily_alerts,
    v_delivery_success, v_alert_responses, v_rule_activity, v_symbol_activity,
    v_relevance_history
    TO smart_alerts_analyst;
