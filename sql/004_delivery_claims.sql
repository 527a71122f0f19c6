-- 004_delivery_claims: what the delivery core needs beyond 001's outbox (issue 5).
-- A delivery is claimed (SENDING, with a lease) before each attempt, so that the workers and
-- processes that all scan the outbox never send one row twice; a crash mid-call lets the lease
-- lapse and the row is resumed. Destinations a provider called dead are not used again.

ALTER TABLE delivery_logs
    ADD COLUMN secret_ref    text,
    ADD COLUMN claimed_until timestamptz;

COMMENT ON COLUMN delivery_logs.secret_ref IS
    'Webhooks: the name of the secret that signs the payload (never the secret itself).';
COMMENT ON COLUMN delivery_logs.claimed_until IS
    'While SENDING: the attempt''s lease. A SENDING row whose lease has passed was abandoned '
    'by a stopped job and is attempted again.';

CREATE TABLE disabled_destinations (
    channel     varchar(20) NOT NULL,
    destination text NOT NULL,
    reason      text NOT NULL,
    disabled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, destination)
);

COMMENT ON TABLE disabled_destinations IS
    'Destinations a provider declared dead (an unregistered push token, an unknown mailbox, '
    'an invalid or unsubscribed phone number, a webhook answering 410 Gone). Deliveries to '
    'them are FAILED without an attempt. Delete a row to use the destination again.';

GRANT SELECT, INSERT ON disabled_destinations TO smart_alerts_writer;
GRANT SELECT ON disabled_destinations TO smart_alerts_analyst;
