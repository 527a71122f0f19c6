-- 007_api_rules: the rules the HTTP API writes, every version of them (api/rule_store.py),
-- and the rule templates users publish.
--
-- alert_rules is also written by the job from alerts.rules, and its upsert keeps whatever
-- version arrives last (a job that lags behind may briefly write an older version back) and
-- has no column for every field of a rule (sessions). The API therefore answers from the
-- documents here, which only the API writes: each change locks the rule's rows (SELECT ...
-- FOR UPDATE), writes alert_rules and a new version, publishes it to alerts.rules and waits
-- for the broker's acknowledgement, then commits.

CREATE TABLE alert_rule_versions (
    rule_id          uuid NOT NULL CONSTRAINT alert_rule_versions_rule_id_fkey
                     REFERENCES alert_rules (id),
    version          int NOT NULL CONSTRAINT alert_rule_versions_version_check CHECK (version >= 1),
    external_id      text NOT NULL,
    user_external_id text NOT NULL,
    document         jsonb NOT NULL,
    change           text NOT NULL CONSTRAINT alert_rule_versions_change_check
                     CHECK (change IN ('create', 'update', 'enable', 'disable')),
    written_by       text NOT NULL,
    written_at       timestamptz NOT NULL DEFAULT now(),
    rule_created_at  timestamptz NOT NULL,
    is_current       boolean NOT NULL,
    deleted_at       timestamptz,
    CONSTRAINT alert_rule_versions_pkey PRIMARY KEY (rule_id, version)
);
CREATE UNIQUE INDEX idx_alert_rule_versions_current ON alert_rule_versions (rule_id)
    WHERE is_current;
-- Rule lists, newest first: one user's, and everybody's (analysts, admins).
CREATE INDEX idx_alert_rule_versions_user_listing
    ON alert_rule_versions (user_external_id, rule_created_at DESC, external_id DESC)
    WHERE is_current AND deleted_at IS NULL;
CREATE INDEX idx_alert_rule_versions_listing
    ON alert_rule_versions (rule_created_at DESC, external_id DESC)
    WHERE is_current AND deleted_at IS NULL;

COMMENT ON TABLE alert_rule_versions IS
    'Every version of every rule written through the HTTP API, each as the exact message '
    'published on alerts.rules. The row with is_current is the rule as it stands; deleted_at '
    'on it means the rule was deleted (a tombstone was published).';
COMMENT ON COLUMN alert_rule_versions.rule_id IS
    'storage_uuid(''rule'', external_id): alert_rules.id of the rule.';
COMMENT ON COLUMN alert_rule_versions.external_id IS 'The rule id on the wire.';
COMMENT ON COLUMN alert_rule_versions.user_external_id IS 'The owner''s user id on the wire.';
COMMENT ON COLUMN alert_rule_versions.document IS 'The rule message (alerts.rules value).';
COMMENT ON COLUMN alert_rule_versions.change IS 'What made this version: create, update, enable, disable.';
COMMENT ON COLUMN alert_rule_versions.written_by IS 'The user id of the token or API key that wrote it.';
COMMENT ON COLUMN alert_rule_versions.rule_created_at IS
    'When the rule was created (the order of rule lists); kept by later versions.';
COMMENT ON COLUMN alert_rule_versions.deleted_at IS
    'Set on the current version when the rule is deleted; creating the id again clears it.';

CREATE TABLE shared_templates (
    id               text PRIMARY KEY,
    user_external_id text NOT NULL,
    name             text NOT NULL,
    description      text NOT NULL,
    visibility       text NOT NULL CONSTRAINT shared_templates_visibility_check
                     CHECK (visibility IN ('private', 'public')),
    body             jsonb NOT NULL,
    source_rule_id   text NOT NULL,
    source_version   int NOT NULL,
    use_count        bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_shared_templates_public
    ON shared_templates (created_at DESC, id DESC) WHERE visibility = 'public';
CREATE INDEX idx_shared_templates_user
    ON shared_templates (user_external_id, created_at DESC, id DESC);

COMMENT ON TABLE shared_templates IS
    'Rule templates users published from one of their rules: the rule body without v, id, '
    'version, user_id, symbol and symbols; the symbol (or watchlist) is given when a rule is '
    'made from it. Private ones are seen by their owner only (and analysts, admins).';
COMMENT ON COLUMN shared_templates.id IS 'The template id in the API (st-<hex>).';
COMMENT ON COLUMN shared_templates.user_external_id IS 'The publisher''s user id on the wire.';
COMMENT ON COLUMN shared_templates.source_rule_id IS 'The wire id of the rule it was published from.';
COMMENT ON COLUMN shared_templates.use_count IS 'How many rules were made from it.';

GRANT SELECT, INSERT, UPDATE, DELETE ON alert_rule_versions, shared_templates TO smart_alerts_writer;
GRANT SELECT ON alert_rule_versions, shared_templates TO smart_alerts_analyst;
