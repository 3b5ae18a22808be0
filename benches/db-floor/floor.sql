-- One batch of 30 commands on random neighbouring groups of the 2,000 that run seeds:
-- the receipt (inbox rows, leases taken), the outcome commit (inbox rows done, links,
-- history, outbox rows, leases released) and the relay's delete of confirmed outbox rows.
\set base random(0, 1969)
\set b random(1, 1000000000000)
BEGIN;
INSERT INTO commands (command_id, command_type, backend, session_id, group_id, reason, requested_by, status, attempts, cycle, before_code, received_at, updated_at) SELECT md5(:b || '-' || i), 'revoke_invite', 'sim', 'session-1', 'g' || (:base + i) || '@g.us', 'link leaked', 'bench', 'executing', 1, 1, 'code', now(), now() FROM generate_series(0, 29) i;
UPDATE group_leases SET owner = 'w', lease_until = now() + interval '30 s' WHERE lane = ANY (ARRAY(SELECT 'sim/session-1/g' || (:base + i) || '@g.us' FROM generate_series(0, 29) i));
COMMIT;
BEGIN;
UPDATE commands SET status = 'done', outcome = 'rotated', new_code = md5(command_id), event_id = command_id, updated_at = now(), finished_at = now() WHERE command_id = ANY (ARRAY(SELECT md5(:b || '-' || i) FROM generate_series(0, 29) i));
UPDATE links SET invite_code = md5(random()::text), issued_at = now(), expires_at = now() + interval '7 days' + random() * interval '1 s', rotation_count = rotation_count + 1, last_command_id = md5(random()::text), last_rotated_at = now(), updated_at = now() WHERE backend = 'sim' AND session_id = 'session-1' AND group_id = ANY (ARRAY(SELECT 'g' || (:base + i) || '@g.us' FROM generate_series(0, 29) i));
INSERT INTO link_history (backend, session_id, group_id, command_id, command_type, trigger, outcome, attempts, old_code, new_code, started_at, occurred_at) SELECT 'sim', 'session-1', 'g' || (:base + i) || '@g.us', md5(:b || '-' || i), 'revoke_invite', 'command', 'rotated', 1, 'old', 'new', now(), now() FROM generate_series(0, 29) i;
INSERT INTO outbox (exchange, routing_key, message_id, message_type, correlation_id, headers, payload, created_at) SELECT 'invite_link.events', 'invite_link.rotated', md5(:b || '-' || i), 'invite_link.rotated', md5(:b || '-' || i), '{"x":"y"}', convert_to(repeat('{"k":"abcdefgh"}', 55), 'UTF8'), now() FROM generate_series(0, 29) i;
UPDATE group_leases SET lease_until = 'epoch' WHERE lane = ANY (ARRAY(SELECT 'sim/session-1/g' || (:base + i) || '@g.us' FROM generate_series(0, 29) i));
COMMIT;
DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 30 FOR UPDATE SKIP LOCKED);
