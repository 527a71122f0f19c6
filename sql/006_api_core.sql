-- 006_api_core: what the HTTP API (api/) itself keeps: API keys and the audit log.

CREATE TABLE api_keys (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_external_id text NOT NULL,
    name             text NOT NULL,
    prefix           text NOT NULL CONSTRAINT api_keys_prefix_key UNIQUE,
    key_hash         text NOT NULL,
    scopes           text[] NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_used_at     timestamptz,
    expires_at       timestamptz,
    revoked_at       timestamptz
);
CREATE INDEX idx_api_keys_user_external_id ON api_keys (user_external_id);

COMMENT ON TABLE api_keys IS
    'API keys for server-to-server integrations. The key itself is shown once when created and '
    'never stored: key_hash is its SHA-256 (hex), prefix the lookup part of sa_<prefix>_<secret>.';
COMMENT ON COLUMN api_keys.id IS 'The key''s id (shown in the API''s key list; not secret).';
COMMENT ON COLUMN api_keys.user_external_id IS 'The user the key acts as, as on the wire.';
COMMENT ON COLUMN api_keys.scopes IS 'What the key may do: rules:read, rules:write, alerts:read, ...';
COMMENT ON COLUMN api_keys.revoked_at IS 'When the key was revoked; a revoked key is refused.';

CREATE TABLE api_audit_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    actor            text NOT NULL,
    actor_role       text NOT NULL,
    via              text NOT NULL CONSTRAINT api_audit_log_via_check CHECK (via IN ('jwt', 'api_key')),
    api_key_id       uuid,
    method           text NOT NULL,
    path             text NOT NULL,
    status           int NOT NULL,
    client_address   text,
    user_agent       text,
    request_id       text
);
CREATE INDEX idx_api_audit_log_actor_at ON api_audit_log (actor, at);
CREATE INDEX idx_api_audit_log_at ON api_audit_log (at);

COMMENT ON TABLE api_audit_log IS
    'Every write through the HTTP API (POST, PUT, PATCH, DELETE), successful or refused after '
    'authentication: who (actor, role, key), what (method, path, status), when, from where.';
COMMENT ON COLUMN api_audit_log.id IS 'Order of recording.';
COMMENT ON COLUMN api_audit_log.actor IS 'The user id of the token or API key that made the call.';
COMMENT ON COLUMN api_audit_log.client_address IS 'The peer address as the API server saw it.';

GRANT SELECT, INSERT, UPDATE ON api_keys TO smart_alerts_writer;
GRANT SELECT, INSERT ON api_audit_log TO smart_alerts_writer;
GRANT SELECT ON api_audit_log TO smart_alerts_analyst;
