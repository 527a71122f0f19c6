-- 002_analyst_views_and_roles: read-friendly views for analysts, and the two access roles.

-- ---------------------------------------------------------------------------- views

CREATE VIEW v_alerts AS
SELECT
    t.id                                          AS alert_id,
    t.external_id                                 AS alert_external_id,
    t.rule_id,
    r.external_id                                 AS rule_external_id,
    r.name                                        AS rule_name,
    t.rule_version,
    t.user_id,
    coalesce(t.user_external_id, r.user_external_id) AS user_external_id,
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

COMMENT ON VIEW v_alerts IS
    'Triggered alerts with their rule''s name and the wire ids of alert, rule and user.';

CREATE VIEW v_daily_alert_counts AS
SELECT
    (t.triggered_at AT TIME ZONE 'UTC')::date AS day,
    t.user_id,
    t.user_external_id,
    t.symbol,
    t.priority,
    count(*)                                  AS alerts
FROM triggered_alerts AS t
GROUP BY 1, 2, 3, 4, 5;

COMMENT ON VIEW v_daily_alert_counts IS
    'Alerts per UTC day (of triggered_at, event time), user, symbol and priority.';

CREATE VIEW v_delivery_outcomes AS
SELECT
    d.channel,
    d.status,
    count(*)                                                  AS deliveries,
    coalesce(sum(d.attempts), 0)                              AS attempts,
    avg(d.delivered_at - d.created_at)
        FILTER (WHERE d.delivered_at IS NOT NULL)             AS avg_time_to_deliver,
    max(d.updated_at)                                         AS last_update
FROM delivery_logs AS d
GROUP BY d.channel, d.status;

COMMENT ON VIEW v_delivery_outcomes IS
    'Deliveries per channel and status, with attempts and the mean time from record to delivery.';

-- ---------------------------------------------------------------------------- roles
-- Roles are cluster-wide while migrations run per database, so two migrations of two databases
-- may race here: the existence check and a concurrent CREATE ROLE are both tolerated. Existing
-- roles (made by a DBA beforehand) are kept as they are; creating them needs CREATEROLE.

DO $roles$
DECLARE
    wanted text[];
BEGIN
    FOREACH wanted SLICE 1 IN ARRAY ARRAY[
        ['smart_alerts_writer',
         'VS-9 Smart Alerts job: reads and writes the history tables (grant it to a login role).'],
        ['smart_alerts_analyst',
         'VS-9 Smart Alerts analysts: read-only access to the history tables and views.']
    ] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = wanted[1]) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', wanted[1]);
                EXECUTE format('COMMENT ON ROLE %I IS %L', wanted[1], wanted[2]);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a concurrent migration of another database
            END;
        END IF;
    END LOOP;
END
$roles$;

-- USAGE on public is granted to PUBLIC by default; grant it explicitly where we may (a database
-- that revoked it and is migrated by a non-owner keeps the DBA's choice).
DO $usage$
BEGIN
    GRANT USAGE ON SCHEMA public TO smart_alerts_writer, smart_alerts_analyst;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot grant USAGE on schema public: %', SQLERRM;
END
$usage$;

-- Later migrations grant on the tables and views they create, in the same way.

GRANT SELECT, INSERT, UPDATE, DELETE
    ON alert_rules, alert_conditions, triggered_alerts, consolidated_alerts, delivery_logs,
       user_alert_profiles
    TO smart_alerts_writer;

GRANT SELECT
    ON alert_rules, alert_conditions, triggered_alerts, consolidated_alerts, delivery_logs,
       user_alert_profiles, v_alerts, v_daily_alert_counts, v_delivery_outcomes
    TO smart_alerts_analyst;
