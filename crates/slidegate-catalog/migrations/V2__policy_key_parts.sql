-- What forward-auth counts a request as for a policy with a match rule, as the
-- config file's `key`: "client_ip", "api_key" or "header:<name>", 1 to 4 parts.
-- Existing policies keep counting per client address.
ALTER TABLE policies
    ADD COLUMN key_parts text[] NOT NULL DEFAULT '{client_ip}'
        CHECK (cardinality(key_parts) BETWEEN 1 AND 4);
