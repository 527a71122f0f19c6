-- 008_api_profiles: the profile documents the HTTP API changes (api/profile_store.py).
-- users.profiles is the source of truth for the job, but a change through the API must be
-- read-modify-write on the latest document: the row is locked (SELECT ... FOR UPDATE), the new
-- document published and acknowledged, then committed, so concurrent changes never lose one.

CREATE TABLE profile_documents (
    user_external_id text PRIMARY KEY,
    revision         bigint NOT NULL CONSTRAINT profile_documents_revision_check CHECK (revision >= 0),
    document         jsonb NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    updated_by       text NOT NULL
);

COMMENT ON TABLE profile_documents IS
    'The latest profile of each user changed through the API, exactly as published on '
    'users.profiles. A user without a row has the profile the job stored in '
    'user_alert_profiles (revision 0), else the documented defaults.';
COMMENT ON COLUMN profile_documents.user_external_id IS 'The user id on the wire.';
COMMENT ON COLUMN profile_documents.revision IS
    'Incremented by every change; the ETag of GET /v1/profile. 0 only while a first change is '
    'under way (the row exists to be locked).';
COMMENT ON COLUMN profile_documents.document IS 'The profile message (users.profiles value).';
COMMENT ON COLUMN profile_documents.updated_by IS 'Who made the last change (the actor).';

GRANT SELECT, INSERT, UPDATE, DELETE ON profile_documents TO smart_alerts_writer;
GRANT SELECT ON profile_documents TO smart_alerts_analyst;
