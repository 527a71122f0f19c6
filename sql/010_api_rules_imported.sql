-- 010_api_rules_imported: rules that reached alerts.rules from another producer (the CLI,
-- replays, the demo) are read through the API from alert_rules, where the job stored them,
-- and the API's first change of one "imports" it: the version the job stored becomes the
-- first row of its history here (change 'imported'), the change the next one
-- (api/rule_store.py). Nobody known to the API wrote that version, hence no written_by.

ALTER TABLE alert_rule_versions DROP CONSTRAINT alert_rule_versions_change_check;
ALTER TABLE alert_rule_versions ADD CONSTRAINT alert_rule_versions_change_check
    CHECK (change IN ('imported', 'create', 'update', 'enable', 'disable'));
ALTER TABLE alert_rule_versions ALTER COLUMN written_by DROP NOT NULL;
ALTER TABLE alert_rule_versions ADD CONSTRAINT alert_rule_versions_written_by_check
    CHECK ((written_by IS NULL) = (change = 'imported'));

COMMENT ON COLUMN alert_rule_versions.change IS
    'What made this version: create, update, enable, disable; imported: the version another '
    'producer put on alerts.rules, as the job stored it in alert_rules, when the API first '
    'changed the rule.';
COMMENT ON COLUMN alert_rule_versions.written_by IS
    'The user id of the token or API key that wrote it; NULL for an imported version.';
COMMENT ON COLUMN alert_rule_versions.written_at IS
    'When it was written; for an imported version, when the job stored it (alert_rules.updated_at).';

-- The trading sessions a rule watches, so a rule read back from alert_rules is the rule that
-- was published (rows stored before this column read as NULL: the default, 'any').
ALTER TABLE alert_rules ADD COLUMN sessions text
    CONSTRAINT alert_rules_sessions_check CHECK (sessions IN ('any', 'regular', 'extended'));
COMMENT ON COLUMN alert_rules.sessions IS
    'The sessions the rule is evaluated in: any, regular or extended (docs/rules.md); NULL in '
    'rows written before migration 010 means any.';

-- A user's rule list reads that user's rows of alert_rules beside their current versions.
-- (Everybody's list, for analysts and admins, reads both tables whole: an index in creation
-- order is not used for the merged order.)
CREATE INDEX idx_alert_rules_user_listing
    ON alert_rules (user_external_id, created_at DESC, external_id DESC)
    WHERE deleted_at IS NULL AND conditions IS NOT NULL;
