-- 009_api_webhooks: webhook endpoints made through the HTTP API, with their signing secrets
-- encrypted at rest.

CREATE TABLE webhook_endpoints (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_external_id          text NOT NULL,
    url                       text NOT NULL,
    description               text NOT NULL DEFAULT '',
    secret_encrypted          text NOT NULL,
    previous_secret_encrypted text,
    previous_expires_at       timestamptz,
    created_at                timestamptz NOT NULL DEFAULT now(),
    rotated_at                timestamptz,
    CONSTRAINT webhook_endpoints_user_url_key UNIQUE (user_external_id, url),
    CONSTRAINT webhook_endpoints_previous_check
        CHECK ((previous_secret_encrypted IS NULL) = (previous_expires_at IS NULL))
);

COMMENT ON TABLE webhook_endpoints IS
    'A user''s webhook endpoints. A profile names one as destinations.webhooks[].secret_ref = '
    '''endpoint:<id>''; the job signs its deliveries with the secrets stored here.';
COMMENT ON COLUMN webhook_endpoints.id IS
    'The endpoint''s id (random; the profile''s secret_ref is endpoint:<id>).';
COMMENT ON COLUMN webhook_endpoints.user_external_id IS
    'The owner, as on the wire; its secret signs only that user''s notifications.';
COMMENT ON COLUMN webhook_endpoints.secret_encrypted IS
    'The whsec_ signing secret, encrypted with Fernet under SMART_ALERTS_SECRET_KEY; it is '
    'shown once, when created or rotated, and never stored in clear.';
COMMENT ON COLUMN webhook_endpoints.previous_secret_encrypted IS
    'The secret before the last rotation; it still signs (beside the current one) until '
    'previous_expires_at.';

GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints TO smart_alerts_writer;
