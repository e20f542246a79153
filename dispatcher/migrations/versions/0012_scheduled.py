# ruff: noqa: E501
"""Scheduled jobs: ``enqueue(..., deliver_at=...)`` for a time still ahead writes the job as
``scheduled``, apart from the due backlog (a week of reminders is no outage), and the sweeper
makes it ``pending`` at its time (``dispatcher.outbox.promote_scheduled``).

- The status CHECK gains ``scheduled`` (PostgreSQL: ``NOT VALID``, then ``VALIDATE``, so the
  table is not scanned under the ALTER's lock; a partitioned outbox in one step). SQLite copies
  the table to change a CHECK, which drops its triggers: the count triggers of 0008 are made
  again right after (their text frozen here).
- ``ix_dispatcher_jobs_ordering`` counts a scheduled job among its key's live jobs (a later job
  of the key waits for it, as for any job): built again with the wider predicate (one scan of
  the jobs table, writes wait for it).
- ``ix_dispatcher_jobs_scheduled``: the scheduled jobs by time, for the sweeper.
- ``dispatcher_enqueue`` writes ``scheduled`` for a time ahead: the functions as
  ``dispatcher.enqueue_sql`` generates them at this revision (``FUNCTIONS``, frozen; a test holds
  it equal to today's generator).

Downgrade: scheduled jobs become pending with their time kept (the claim waits for it).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

NAME = "ck_dispatcher_jobs_status"
OLD = "status IN ('pending', 'in_flight', 'retrying', 'delivered', 'dead', 'cancelled')"
NEW = (
    "status IN ('pending', 'in_flight', 'retrying', 'delivered', 'dead', 'cancelled', 'scheduled')"
)
OLD_LIVE = "status IN ('pending', 'in_flight', 'retrying')"
NEW_LIVE = "status IN ('pending', 'in_flight', 'retrying', 'scheduled')"
SQLITE_COUNT_TRIGGERS = [
    "CREATE TRIGGER dispatcher_jobs_count_insert AFTER INSERT ON dispatcher_jobs BEGIN INSERT INTO dispatcher_counts (queue, status, jobs) VALUES (NEW.queue, NEW.status, +1) ON CONFLICT (queue, status) DO UPDATE SET jobs = jobs + 1; END",
    "CREATE TRIGGER dispatcher_jobs_count_update AFTER UPDATE OF queue, status ON dispatcher_jobs WHEN OLD.queue IS NOT NEW.queue OR OLD.status IS NOT NEW.status BEGIN INSERT INTO dispatcher_counts (queue, status, jobs) VALUES (OLD.queue, OLD.status, -1) ON CONFLICT (queue, status) DO UPDATE SET jobs = jobs - 1; INSERT INTO dispatcher_counts (queue, status, jobs) VALUES (NEW.queue, NEW.status, +1) ON CONFLICT (queue, status) DO UPDATE SET jobs = jobs + 1; END",
    "CREATE TRIGGER dispatcher_jobs_count_delete AFTER DELETE ON dispatcher_jobs BEGIN INSERT INTO dispatcher_counts (queue, status, jobs) VALUES (OLD.queue, OLD.status, -1) ON CONFLICT (queue, status) DO UPDATE SET jobs = jobs - 1; END",
]

FUNCTIONS = r"""CREATE OR REPLACE FUNCTION dispatcher_show(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
  head text := left(value, 40);
  quote text := CASE WHEN strpos(head, '''') > 0 AND strpos(head, '"') = 0 THEN '"' ELSE '''' END;
  out text := '';
  c text;
  code int;
BEGIN
  FOREACH c IN ARRAY regexp_split_to_array(head, '') LOOP
    code := ascii(c);
    out := out || CASE
      WHEN c = '\' THEN '\\'
      WHEN c = quote THEN '\' || c
      WHEN c = E'\t' THEN '\t' WHEN c = E'\n' THEN '\n' WHEN c = E'\r' THEN '\r'
      WHEN code < 32 OR code BETWEEN 127 AND 255 THEN '\x' || lpad(to_hex(code), 2, '0')
      WHEN code > 65535 THEN '\U' || lpad(to_hex(code), 8, '0')
      WHEN code > 255 THEN '\u' || lpad(to_hex(code), 4, '0')
      ELSE c END;
  END LOOP;
  RETURN quote || out || quote || CASE WHEN length(value) > 40 THEN '...' ELSE '' END;
END
$fn$;

CREATE OR REPLACE FUNCTION dispatcher_iso_datetime(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
  m text[];
  y int; mo int; d int; h int := 0; mi int := 0; se int := 0;
  oh int; om int; os int; micro text; offset_text text := '';
BEGIN
  IF length(value) > 64 OR octet_length(value) <> length(value) THEN
    RETURN NULL;
  END IF;
  m := regexp_match(value, '^([0-9]{4})-([0-9]{2})-([0-9]{2})(?:.([0-9]{2})(?::([0-9]{2})'
    '(?::([0-9]{2})(?:[.,]([0-9]+))?)?)?(?:(Z)|([+-])([0-9]{2})(?::([0-9]{2})(?::([0-9]{2})'
    '(?:\.([0-9]{1,6}))?)?)?)?)?$');
  IF m IS NULL THEN
    RETURN NULL;
  END IF;
  y := m[1]::int; mo := m[2]::int; d := m[3]::int;
  IF y < 1 OR mo NOT BETWEEN 1 AND 12 THEN
    RETURN NULL;
  END IF;
  IF d NOT BETWEEN 1 AND extract(day FROM make_date(y, mo, 1) + interval '1 month - 1 day') THEN
    RETURN NULL;
  END IF;
  h := coalesce(m[4]::int, 0); mi := coalesce(m[5]::int, 0); se := coalesce(m[6]::int, 0);
  IF h > 23 OR mi > 59 OR se > 59 THEN
    RETURN NULL;
  END IF;
  micro := rpad(left(coalesce(m[7], ''), 6), 6, '0');
  IF m[8] IS NOT NULL THEN
    offset_text := '+00:00';
  ELSIF m[9] IS NOT NULL THEN
    oh := m[10]::int; om := coalesce(m[11]::int, 0); os := coalesce(m[12]::int, 0);
    IF oh > 23 OR om > 59 OR os > 59 THEN
      RETURN NULL;
    END IF;
    IF os <> 0 OR coalesce(m[13], '') ~ '[1-9]' THEN
      RETURN '!';
    END IF;
    offset_text := CASE WHEN oh = 0 AND om = 0 THEN '+' ELSE m[9] END
      || lpad(oh::text, 2, '0') || ':' || lpad(om::text, 2, '0');
  END IF;
  RETURN m[1] || '-' || m[2] || '-' || m[3] || 'T' || lpad(h::text, 2, '0') || ':'
    || lpad(mi::text, 2, '0') || ':' || lpad(se::text, 2, '0')
    || CASE WHEN micro = '000000' THEN '' ELSE '.' || micro END || offset_text;
END
$fn$;

CREATE OR REPLACE FUNCTION dispatcher_url_problem(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
  scheme text := lower(substring(value FROM '^([A-Za-z][A-Za-z0-9+.-]*):'));
  rest text := value;
  netloc text;
  hostinfo text;
  host text;
  port text;
BEGIN
  IF scheme IS NOT NULL THEN
    rest := substr(value, length(scheme) + 2);
  END IF;
  IF left(rest, 2) = '//' THEN
    netloc := substring(substr(rest, 3) FROM '^[^/?#]*');
    IF (strpos(netloc, '[') > 0) <> (strpos(netloc, ']') > 0) THEN
      RETURN 'not a valid URL';
    END IF;
    hostinfo := regexp_replace(netloc, '^.*@', '');
    IF strpos(netloc, '[') > 0 THEN
      host := split_part(split_part(netloc, '[', 2), ']', 1);
      IF host !~ '^v[a-fA-F0-9]+\..+$' AND (host !~ '^[0-9A-Fa-f:.]+(%.+)?$'
          OR host !~ ':') THEN
        RETURN 'not a valid URL';
      END IF;
    END IF;
    IF strpos(hostinfo, '[') > 0 THEN
      host := split_part(split_part(hostinfo, '[', 2), ']', 1);
      port := substring(split_part(hostinfo, ']', 2) FROM ':(.*)$');
    ELSE
      host := split_part(hostinfo, ':', 1);
      port := CASE WHEN strpos(hostinfo, ':') > 0
        THEN substr(hostinfo, strpos(hostinfo, ':') + 1) END;
    END IF;
    IF coalesce(port, '') <> '' THEN
      IF port !~ '^[0-9]+$' OR length(ltrim(port, '0')) > 5 OR port::int > 65535 THEN
        RETURN 'not a valid URL';
      END IF;
    END IF;
  END IF;
  IF coalesce(scheme, '') NOT IN ('http', 'https') OR coalesce(host, '') = '' THEN
    RETURN 'must be an http:// or https:// URL with a host';
  END IF;
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION dispatcher_event_check(body jsonb, OUT payload text, OUT problems text[])
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
  p text[] := '{}';
  parts text[] := '{}';
  fields text[];
  given boolean := false;
  v jsonb; it jsonb; fn jsonb; ft jsonb; fv jsonb;
  s text; t text; i int; n int;
BEGIN
  IF body IS NULL OR jsonb_typeof(body) <> 'object' THEN
    problems := ARRAY['body: expected a JSON object (got ' || CASE jsonb_typeof(body) WHEN 'number' THEN CASE WHEN body::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')'];
    RETURN;
  END IF;
  IF body ? 'segments' THEN
    IF body - '{customEventId,segments,dataFields}'::text[] <> '{}'::jsonb THEN
      p := p || ARRAY(SELECT CASE WHEN k ~ '^(?:[A-Za-z0-9_-]{1,64})$' THEN k ELSE dispatcher_show(k) END || ': unknown field' FROM jsonb_object_keys(body) AS k WHERE k <> ALL ('{customEventId,segments,dataFields}'::text[]));
    END IF;
    v := body -> 'customEventId';
    IF v IS NULL THEN p := p || ('customEventId' || ': required'); ELSE
      IF (jsonb_typeof(v) IS DISTINCT FROM 'number' OR v::text ~ '[.eE]') THEN
        p := p || ('customEventId' || ': ' || 'expected an integer (got ' || CASE jsonb_typeof(v) WHEN 'number' THEN CASE WHEN v::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
      ELSIF (v::text::numeric NOT BETWEEN -2147483648 AND 2147483647) THEN
        p := p || ('customEventId' || ': ' || 'must be an int32 (-2147483648..2147483647)');
      ELSE
        parts := parts || ('"customEventId":' || v::text);
      END IF;
    END IF;
    v := body -> 'segments';
    IF v IS NULL THEN p := p || ('segments' || ': required'); ELSE
      IF jsonb_typeof(v) IS DISTINCT FROM 'array' THEN
        p := p || ('segments' || ': expected a list of segment ids (got ' || CASE jsonb_typeof(v) WHEN 'number' THEN CASE WHEN v::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
      ELSIF jsonb_array_length(v) = 0 THEN
        p := p || ('segments' || ': at least one segment id is required');
      ELSE
        FOR i IN 0 .. jsonb_array_length(v) - 1 LOOP
          it := v -> i;
          IF (jsonb_typeof(it) IS DISTINCT FROM 'number' OR it::text ~ '[.eE]') THEN
            p := p || ('segments' || '[' || i || ']' || ': ' || 'expected an integer (got ' || CASE jsonb_typeof(it) WHEN 'number' THEN CASE WHEN it::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
          ELSIF (it::text::numeric NOT BETWEEN -2147483648 AND 2147483647) THEN
            p := p || ('segments' || '[' || i || ']' || ': ' || 'must be an int32 (-2147483648..2147483647)');
          END IF;
        END LOOP;
        parts := parts || ('"segments":' || replace(v::text, ' ', ''));
      END IF;
    END IF;
    v := body -> 'dataFields';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' THEN
      IF jsonb_typeof(v) IS DISTINCT FROM 'array' THEN
        p := p || ('dataFields' || ': expected a list of data fields (got ' || CASE jsonb_typeof(v) WHEN 'number' THEN CASE WHEN v::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
      ELSE
        fields := '{}';
        FOR i IN 0 .. jsonb_array_length(v) - 1 LOOP
          it := v -> i;
          n := coalesce(array_length(p, 1), 0);
          IF jsonb_typeof(it) IS DISTINCT FROM 'object' THEN
            p := p || ('dataFields' || '[' || i || ']' || ': expected a data field {name, type, value} (got ' || CASE jsonb_typeof(it) WHEN 'number' THEN CASE WHEN it::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
            CONTINUE;
          END IF;
          IF it - '{name,type,value}'::text[] <> '{}'::jsonb THEN
            p := p || ARRAY(SELECT 'dataFields' || '[' || i || ']' || '.' || CASE WHEN k ~ '^(?:[A-Za-z0-9_-]{1,64})$' THEN k ELSE dispatcher_show(k) END || ': unknown field' FROM jsonb_object_keys(it) AS k WHERE k <> ALL ('{name,type,value}'::text[]));
          END IF;
          fn := it -> 'name'; ft := it -> 'type'; fv := it -> 'value';
          IF fn IS NULL THEN p := p || ('dataFields' || '[' || i || ']' || '.name: required'); ELSE
            s := fn #>> '{}';
            IF (jsonb_typeof(fn) IS DISTINCT FROM 'string') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.name' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(fn) WHEN 'number' THEN CASE WHEN fn::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
            ELSIF (s = '') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.name' || ': ' || 'must not be empty');
            ELSIF (octet_length(s) > 255 AND (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) > 255) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.name' || ': ' || 'at most 255 characters (got ' || (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) || ')');
            END IF;
          END IF;
          IF ft IS NULL THEN
            p := p || ('dataFields' || '[' || i || ']' || '.type: required');
          ELSIF jsonb_typeof(ft) IS DISTINCT FROM 'string' THEN
            p := p || ('dataFields' || '[' || i || ']' || '.type: expected a string (got ' || CASE jsonb_typeof(ft) WHEN 'number' THEN CASE WHEN ft::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
          ELSIF ft #>> '{}' <> ALL ('{String,Text,Number,Money,Date,DateTime,Boolean,URL}'::text[]) THEN
            p := p || ('dataFields' || '[' || i || ']' || '.type: must be one of String, Text, Number, Money, Date, DateTime, Boolean, URL (got ' || dispatcher_show(ft #>> '{}') || ')');
          ELSIF fv IS NULL THEN
            p := p || ('dataFields' || '[' || i || ']' || '.value: required');
          ELSIF jsonb_typeof(fv) IS DISTINCT FROM 'string' THEN
            p := p || ('dataFields' || '[' || i || ']' || '.value: expected a string (got ' || CASE jsonb_typeof(fv) WHEN 'number' THEN CASE WHEN fv::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
          ELSIF ft #>> '{}' = 'String' THEN
            s := fv #>> '{}';
            IF (jsonb_typeof(fv) IS DISTINCT FROM 'string') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(fv) WHEN 'number' THEN CASE WHEN fv::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
            ELSIF (octet_length(s) > 4000 AND (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) > 4000) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'at most 4000 characters (got ' || (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) || ')');
            ELSE
              t := s;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('String'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'Text' THEN
            s := fv #>> '{}';
            IF (jsonb_typeof(fv) IS DISTINCT FROM 'string') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(fv) WHEN 'number' THEN CASE WHEN fv::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
            ELSIF (octet_length(s) > 65536 AND (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) > 65536) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'at most 65536 characters (got ' || (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) || ')');
            ELSE
              t := s;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('Text'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'Number' THEN
            s := fv #>> '{}';
            IF (length(s) > 402 OR s !~ '^(?:-?[0-9]+(\.[0-9]+)?)$') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must be a plain decimal number such as -12.50 (no exponent)');
            ELSIF (greatest(length(ltrim(split_part(ltrim(s, '-'), '.', 1), '0')), 1) + length(split_part(s, '.', 2)) > 400) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'at most 400 digits');
            ELSE
              t := CASE WHEN left(s, 1) = '-' THEN '-' ELSE '' END || coalesce(nullif(ltrim(split_part(ltrim(s, '-'), '.', 1), '0'), ''), '0') || CASE WHEN s LIKE '%.%' THEN '.' || split_part(s, '.', 2) ELSE '' END;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('Number'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'Money' THEN
            s := fv #>> '{}';
            IF (length(s) > 402 OR s !~ '^(?:-?[0-9]+(\.[0-9]+)?)$') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must be a plain decimal number such as -12.50 (no exponent)');
            ELSIF (greatest(length(ltrim(split_part(ltrim(s, '-'), '.', 1), '0')), 1) + length(split_part(s, '.', 2)) > 400) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'at most 400 digits');
            ELSE
              t := CASE WHEN left(s, 1) = '-' THEN '-' ELSE '' END || coalesce(nullif(ltrim(split_part(ltrim(s, '-'), '.', 1), '0'), ''), '0') || CASE WHEN s LIKE '%.%' THEN '.' || split_part(s, '.', 2) ELSE '' END;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('Money'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'Date' THEN
            s := fv #>> '{}';
            IF (CASE WHEN s !~ '^(?:[0-9]{4}-[0-9]{2}-[0-9]{2})$' THEN true WHEN substr(s, 1, 4)::int < 1 OR substr(s, 6, 2)::int NOT BETWEEN 1 AND 12 THEN true ELSE substr(s, 9, 2)::int NOT BETWEEN 1 AND extract(day FROM make_date(substr(s, 1, 4)::int, substr(s, 6, 2)::int, 1) + interval '1 month - 1 day')::int END) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must be a date written YYYY-MM-DD');
            ELSE
              t := s;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('Date'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'DateTime' THEN
            s := fv #>> '{}';
            t := dispatcher_iso_datetime(s);
            IF (t IS NULL) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must be an ISO 8601 date-time such as 2024-05-01T12:30:00+02:00');
            ELSIF (t = '!') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'UTC offset must be a whole number of minutes');
            ELSE
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('DateTime'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'Boolean' THEN
            s := fv #>> '{}';
            IF (octet_length(s) <> length(s) OR lower(s) NOT IN ('true', 'false')) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'expected a boolean or the string ''true'' or ''false''');
            ELSE
              t := lower(s);
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('Boolean'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'URL' THEN
            s := fv #>> '{}';
            t := dispatcher_url_problem(s);
            IF (jsonb_typeof(fv) IS DISTINCT FROM 'string') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(fv) WHEN 'number' THEN CASE WHEN fv::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
            ELSIF (s = '') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must not be empty');
            ELSIF (octet_length(s) > 2048 AND (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) > 2048) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'at most 2048 characters (got ' || (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) || ')');
            ELSIF (s ~ '[\u0001-\u0020\u007f\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000]') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must not contain whitespace or control characters');
            ELSIF (t IS NOT NULL) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || t);
            ELSE
              t := s;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('URL'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          END IF;
        END LOOP;
        IF cardinality(fields) > 0 THEN
          parts := parts || ('"dataFields":[' || array_to_string(fields, ',') || ']');
        END IF;
      END IF;
    END IF;
  ELSE
    IF body - '{customEventId,customerId,customerEmail,customerEmailMd5,customerEmailSha256,customerPhone,customerCrmId,dataFields}'::text[] <> '{}'::jsonb THEN
      p := p || ARRAY(SELECT CASE WHEN k ~ '^(?:[A-Za-z0-9_-]{1,64})$' THEN k ELSE dispatcher_show(k) END || ': unknown field' FROM jsonb_object_keys(body) AS k WHERE k <> ALL ('{customEventId,customerId,customerEmail,customerEmailMd5,customerEmailSha256,customerPhone,customerCrmId,dataFields}'::text[]));
    END IF;
    v := body -> 'customEventId';
    IF v IS NULL THEN p := p || ('customEventId' || ': required'); ELSE
      IF (jsonb_typeof(v) IS DISTINCT FROM 'number' OR v::text ~ '[.eE]') THEN
        p := p || ('customEventId' || ': ' || 'expected an integer (got ' || CASE jsonb_typeof(v) WHEN 'number' THEN CASE WHEN v::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
      ELSIF (v::text::numeric NOT BETWEEN -2147483648 AND 2147483647) THEN
        p := p || ('customEventId' || ': ' || 'must be an int32 (-2147483648..2147483647)');
      ELSE
        parts := parts || ('"customEventId":' || v::text);
      END IF;
    END IF;
    v := body -> 'customerId';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' THEN
      IF (jsonb_typeof(v) IS DISTINCT FROM 'number' OR v::text ~ '[.eE]') THEN
        p := p || ('customerId' || ': ' || 'expected an integer (got ' || CASE jsonb_typeof(v) WHEN 'number' THEN CASE WHEN v::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
      ELSIF (v::text::numeric NOT BETWEEN -9223372036854775808 AND 9223372036854775807) THEN
        p := p || ('customerId' || ': ' || 'must be an int64 (-9223372036854775808..9223372036854775807)');
      ELSE
        parts := parts || ('"customerId":' || v::text);
      END IF;
      given := true;
    END IF;
    v := body -> 'customerEmail';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' THEN
      s := v #>> '{}';
      IF (jsonb_typeof(v) IS DISTINCT FROM 'string') THEN
        p := p || ('customerEmail' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(v) WHEN 'number' THEN CASE WHEN v::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
      ELSIF (s = '') THEN
        p := p || ('customerEmail' || ': ' || 'must not be empty');
      ELSIF (octet_length(s) > 320 AND (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) > 320) THEN
        p := p || ('customerEmail' || ': ' || 'at most 320 characters (got ' || (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) || ')');
      ELSIF (s ~ '[\u0001-\u0020\u007f\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000]') THEN
        p := p || ('customerEmail' || ': ' || 'must not contain whitespace or control characters');
      ELSIF (length(s) - length(replace(s, '@', '')) <> 1 OR left(s, 1) = '@' OR right(s, 1) = '@') THEN
        p := p || ('customerEmail' || ': ' || 'must look like local-part@domain (exactly one ''@'')');
      ELSE
        parts := parts || ('"customerEmail":' || to_json(s)::text);
      END IF;
      given := true;
    END IF;
    v := body -> 'customerEmailMd5';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' THEN
      s := v #>> '{}';
      IF (jsonb_typeof(v) IS DISTINCT FROM 'string') THEN
        p := p || ('customerEmailMd5' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(v) WHEN 'number' THEN CASE WHEN v::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
      ELSIF (s = '') THEN
        p := p || ('customerEmailMd5' || ': ' || 'must not be empty');
      ELSIF (length(s) <> 32) THEN
        p := p || ('customerEmailMd5' || ': ' || 'must be 32 hexadecimal characters (got ' || length(s) || ')');
      ELSIF (s !~ '^(?:[0-9a-fA-F]*)$') THEN
        p := p || ('customerEmailMd5' || ': ' || 'must be 32 hexadecimal characters (got a non-hexadecimal one)');
      ELSE
        parts := parts || ('"customerEmailMd5":' || to_json(s)::text);
      END IF;
      given := true;
    END IF;
    v := body -> 'customerEmailSha256';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' THEN
      s := v #>> '{}';
      IF (jsonb_typeof(v) IS DISTINCT FROM 'string') THEN
        p := p || ('customerEmailSha256' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(v) WHEN 'number' THEN CASE WHEN v::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
      ELSIF (s = '') THEN
        p := p || ('customerEmailSha256' || ': ' || 'must not be empty');
      ELSIF (length(s) <> 64) THEN
        p := p || ('customerEmailSha256' || ': ' || 'must be 64 hexadecimal characters (got ' || length(s) || ')');
      ELSIF (s !~ '^(?:[0-9a-fA-F]*)$') THEN
        p := p || ('customerEmailSha256' || ': ' || 'must be 64 hexadecimal characters (got a non-hexadecimal one)');
      ELSE
        parts := parts || ('"customerEmailSha256":' || to_json(s)::text);
      END IF;
      given := true;
    END IF;
    v := body -> 'customerPhone';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' THEN
      s := v #>> '{}';
      IF (jsonb_typeof(v) IS DISTINCT FROM 'string') THEN
        p := p || ('customerPhone' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(v) WHEN 'number' THEN CASE WHEN v::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
      ELSIF (s = '') THEN
        p := p || ('customerPhone' || ': ' || 'must not be empty');
      ELSIF (octet_length(s) > 20 AND (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) > 20) THEN
        p := p || ('customerPhone' || ': ' || 'at most 20 characters (got ' || (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) || ')');
      ELSIF (s !~ '^(?:[0-9+\-() ]*)$') THEN
        p := p || ('customerPhone' || ': ' || 'may contain only digits, ''+'', ''-'', ''('', '')'' and spaces');
      ELSIF (s !~ '[0-9]') THEN
        p := p || ('customerPhone' || ': ' || 'must contain at least one digit');
      ELSE
        parts := parts || ('"customerPhone":' || to_json(s)::text);
      END IF;
      given := true;
    END IF;
    v := body -> 'customerCrmId';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' THEN
      s := v #>> '{}';
      IF (jsonb_typeof(v) IS DISTINCT FROM 'string') THEN
        p := p || ('customerCrmId' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(v) WHEN 'number' THEN CASE WHEN v::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
      ELSIF (s = '') THEN
        p := p || ('customerCrmId' || ': ' || 'must not be empty');
      ELSIF (octet_length(s) > 128 AND (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) > 128) THEN
        p := p || ('customerCrmId' || ': ' || 'at most 128 characters (got ' || (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) || ')');
      ELSE
        parts := parts || ('"customerCrmId":' || to_json(s)::text);
      END IF;
      given := true;
    END IF;
    v := body -> 'dataFields';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' THEN
      IF jsonb_typeof(v) IS DISTINCT FROM 'array' THEN
        p := p || ('dataFields' || ': expected a list of data fields (got ' || CASE jsonb_typeof(v) WHEN 'number' THEN CASE WHEN v::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
      ELSE
        fields := '{}';
        FOR i IN 0 .. jsonb_array_length(v) - 1 LOOP
          it := v -> i;
          n := coalesce(array_length(p, 1), 0);
          IF jsonb_typeof(it) IS DISTINCT FROM 'object' THEN
            p := p || ('dataFields' || '[' || i || ']' || ': expected a data field {name, type, value} (got ' || CASE jsonb_typeof(it) WHEN 'number' THEN CASE WHEN it::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
            CONTINUE;
          END IF;
          IF it - '{name,type,value}'::text[] <> '{}'::jsonb THEN
            p := p || ARRAY(SELECT 'dataFields' || '[' || i || ']' || '.' || CASE WHEN k ~ '^(?:[A-Za-z0-9_-]{1,64})$' THEN k ELSE dispatcher_show(k) END || ': unknown field' FROM jsonb_object_keys(it) AS k WHERE k <> ALL ('{name,type,value}'::text[]));
          END IF;
          fn := it -> 'name'; ft := it -> 'type'; fv := it -> 'value';
          IF fn IS NULL THEN p := p || ('dataFields' || '[' || i || ']' || '.name: required'); ELSE
            s := fn #>> '{}';
            IF (jsonb_typeof(fn) IS DISTINCT FROM 'string') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.name' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(fn) WHEN 'number' THEN CASE WHEN fn::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
            ELSIF (s = '') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.name' || ': ' || 'must not be empty');
            ELSIF (octet_length(s) > 255 AND (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) > 255) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.name' || ': ' || 'at most 255 characters (got ' || (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) || ')');
            END IF;
          END IF;
          IF ft IS NULL THEN
            p := p || ('dataFields' || '[' || i || ']' || '.type: required');
          ELSIF jsonb_typeof(ft) IS DISTINCT FROM 'string' THEN
            p := p || ('dataFields' || '[' || i || ']' || '.type: expected a string (got ' || CASE jsonb_typeof(ft) WHEN 'number' THEN CASE WHEN ft::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
          ELSIF ft #>> '{}' <> ALL ('{String,Text,Number,Money,Date,DateTime,Boolean,URL}'::text[]) THEN
            p := p || ('dataFields' || '[' || i || ']' || '.type: must be one of String, Text, Number, Money, Date, DateTime, Boolean, URL (got ' || dispatcher_show(ft #>> '{}') || ')');
          ELSIF fv IS NULL THEN
            p := p || ('dataFields' || '[' || i || ']' || '.value: required');
          ELSIF jsonb_typeof(fv) IS DISTINCT FROM 'string' THEN
            p := p || ('dataFields' || '[' || i || ']' || '.value: expected a string (got ' || CASE jsonb_typeof(fv) WHEN 'number' THEN CASE WHEN fv::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
          ELSIF ft #>> '{}' = 'String' THEN
            s := fv #>> '{}';
            IF (jsonb_typeof(fv) IS DISTINCT FROM 'string') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(fv) WHEN 'number' THEN CASE WHEN fv::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
            ELSIF (octet_length(s) > 4000 AND (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) > 4000) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'at most 4000 characters (got ' || (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) || ')');
            ELSE
              t := s;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('String'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'Text' THEN
            s := fv #>> '{}';
            IF (jsonb_typeof(fv) IS DISTINCT FROM 'string') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(fv) WHEN 'number' THEN CASE WHEN fv::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
            ELSIF (octet_length(s) > 65536 AND (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) > 65536) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'at most 65536 characters (got ' || (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) || ')');
            ELSE
              t := s;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('Text'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'Number' THEN
            s := fv #>> '{}';
            IF (length(s) > 402 OR s !~ '^(?:-?[0-9]+(\.[0-9]+)?)$') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must be a plain decimal number such as -12.50 (no exponent)');
            ELSIF (greatest(length(ltrim(split_part(ltrim(s, '-'), '.', 1), '0')), 1) + length(split_part(s, '.', 2)) > 400) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'at most 400 digits');
            ELSE
              t := CASE WHEN left(s, 1) = '-' THEN '-' ELSE '' END || coalesce(nullif(ltrim(split_part(ltrim(s, '-'), '.', 1), '0'), ''), '0') || CASE WHEN s LIKE '%.%' THEN '.' || split_part(s, '.', 2) ELSE '' END;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('Number'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'Money' THEN
            s := fv #>> '{}';
            IF (length(s) > 402 OR s !~ '^(?:-?[0-9]+(\.[0-9]+)?)$') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must be a plain decimal number such as -12.50 (no exponent)');
            ELSIF (greatest(length(ltrim(split_part(ltrim(s, '-'), '.', 1), '0')), 1) + length(split_part(s, '.', 2)) > 400) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'at most 400 digits');
            ELSE
              t := CASE WHEN left(s, 1) = '-' THEN '-' ELSE '' END || coalesce(nullif(ltrim(split_part(ltrim(s, '-'), '.', 1), '0'), ''), '0') || CASE WHEN s LIKE '%.%' THEN '.' || split_part(s, '.', 2) ELSE '' END;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('Money'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'Date' THEN
            s := fv #>> '{}';
            IF (CASE WHEN s !~ '^(?:[0-9]{4}-[0-9]{2}-[0-9]{2})$' THEN true WHEN substr(s, 1, 4)::int < 1 OR substr(s, 6, 2)::int NOT BETWEEN 1 AND 12 THEN true ELSE substr(s, 9, 2)::int NOT BETWEEN 1 AND extract(day FROM make_date(substr(s, 1, 4)::int, substr(s, 6, 2)::int, 1) + interval '1 month - 1 day')::int END) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must be a date written YYYY-MM-DD');
            ELSE
              t := s;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('Date'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'DateTime' THEN
            s := fv #>> '{}';
            t := dispatcher_iso_datetime(s);
            IF (t IS NULL) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must be an ISO 8601 date-time such as 2024-05-01T12:30:00+02:00');
            ELSIF (t = '!') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'UTC offset must be a whole number of minutes');
            ELSE
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('DateTime'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'Boolean' THEN
            s := fv #>> '{}';
            IF (octet_length(s) <> length(s) OR lower(s) NOT IN ('true', 'false')) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'expected a boolean or the string ''true'' or ''false''');
            ELSE
              t := lower(s);
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('Boolean'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          ELSIF ft #>> '{}' = 'URL' THEN
            s := fv #>> '{}';
            t := dispatcher_url_problem(s);
            IF (jsonb_typeof(fv) IS DISTINCT FROM 'string') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'expected a string (got ' || CASE jsonb_typeof(fv) WHEN 'number' THEN CASE WHEN fv::text ~ '[.eE]' THEN 'float' ELSE 'integer' END WHEN 'array' THEN 'list' WHEN 'object' THEN 'object' WHEN 'string' THEN 'string' WHEN 'boolean' THEN 'boolean' ELSE 'null' END || ')');
            ELSIF (s = '') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must not be empty');
            ELSIF (octet_length(s) > 2048 AND (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) > 2048) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'at most 2048 characters (got ' || (length(s) + length(regexp_replace(s, '[^\U00010000-\U0010ffff]', '', 'g'))) || ')');
            ELSIF (s ~ '[\u0001-\u0020\u007f\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000]') THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || 'must not contain whitespace or control characters');
            ELSIF (t IS NOT NULL) THEN
              p := p || ('dataFields' || '[' || i || ']' || '.value' || ': ' || t);
            ELSE
              t := s;
              IF coalesce(array_length(p, 1), 0) = n THEN fields := fields || ('{"name":' || to_json(fn #>> '{}')::text || ',"type":' || to_json('URL'::text)::text || ',"value":' || to_json(t)::text || '}'); END IF;
            END IF;
          END IF;
        END LOOP;
        IF cardinality(fields) > 0 THEN
          parts := parts || ('"dataFields":[' || array_to_string(fields, ',') || ']');
        END IF;
      END IF;
    END IF;
    IF NOT given THEN p := p || 'customer: at least one identifier is required (customerId, customerEmail, customerEmailMd5, customerEmailSha256, customerPhone, customerCrmId)'::text; END IF;
  END IF;
  IF cardinality(p) = 0 THEN
    payload := '{' || array_to_string(parts, ',') || '}';
    IF octet_length(payload) > 1048576 THEN
      p := ARRAY['body: serialized event is ' || octet_length(payload) || ' bytes, at most 1048576 allowed'];
      payload := NULL;
    END IF;
  END IF;
  IF cardinality(p) > 100 THEN
    p := p[1:100] || ('errors: ' || (cardinality(p) - 100) || ' more not shown');
  END IF;
  problems := p;
END
$fn$;

CREATE OR REPLACE FUNCTION dispatcher_enqueue(
  queue text, body jsonb, dedupe_key text DEFAULT NULL, ordering_key text DEFAULT NULL,
  deliver_at timestamptz DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_variable
DECLARE
  checked record;
  p text[] := '{}';
  job bigint;
  due timestamptz := greatest(deliver_at, now());  -- as NewJob.due: a past time means now
BEGIN
  IF queue IS NULL OR queue !~ '^[a-z0-9][a-z0-9_-]{0,63}$' THEN
    p := p || ('queue: must be 1-64 characters of a-z, 0-9, ''_'' or ''-'', starting with a letter or digit' || ' (got '
      || CASE WHEN queue IS NULL THEN 'NULL' ELSE dispatcher_show(queue) END || ')');
  END IF;
  checked := dispatcher_event_check(body);
  p := p || checked.problems;
  IF dedupe_key IS NOT NULL AND length(dedupe_key) NOT BETWEEN 1 AND 255 THEN
    p := p || 'dedupe_key: must be a string of 1-255 characters'::text;
  END IF;
  IF ordering_key IS NOT NULL AND length(ordering_key) NOT BETWEEN 1 AND 255 THEN
    p := p || 'ordering_key: must be a string of 1-255 characters'::text;
  END IF;
  IF cardinality(p) > 0 THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = array_to_string(p, '; '),
      HINT = 'dispatcher_enqueue: the body is an ECDP event as the API documents it';
  END IF;
  IF ordering_key IS NOT NULL THEN  -- as dispatcher.outbox.ordering_locks: commit order
    PERFORM pg_advisory_xact_lock(3789,
      (hashtextextended('dispatcher:' || queue || ':' || ordering_key, 0) & 1023)::int);
  END IF;
  INSERT INTO dispatcher_jobs AS j (queue, endpoint, custom_event_id, customer_email, payload,
    dedupe_key, trace_context, ordering_key, status, attempts, next_attempt_at, created_at,
    updated_at)
  VALUES (queue, CASE WHEN body ? 'segments' THEN '/scenariocustomevents/withsegments'
      ELSE '/scenariocustomevents' END,
    (body ->> 'customEventId')::int,
    CASE WHEN body ? 'segments' THEN NULL ELSE lower(body ->> 'customerEmail') END,
    checked.payload, dedupe_key, NULL, ordering_key,
    CASE WHEN due > now() THEN 'scheduled' ELSE 'pending' END, 0, due, now(), now())
  ON CONFLICT DO NOTHING
  RETURNING j.id INTO job;
  IF job IS NULL THEN  -- the key is taken: the existing job's id, as enqueue() returns it
    SELECT j.id INTO job FROM dispatcher_jobs AS j
    WHERE j.queue = queue AND j.dedupe_key = dedupe_key;
    RETURN job;
  END IF;
  IF due <= now() THEN  -- delivered at commit; a scheduled job is left to the sweeper
    PERFORM pg_notify('dispatcher_enqueued', queue);
  END IF;
  RETURN job;
END
$fn$;
"""


def _set_check(check: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        names = {str(c["name"]) for c in sa.inspect(bind).get_check_constraints("dispatcher_jobs")}
        with op.batch_alter_table("dispatcher_jobs", recreate="always") as batch:
            for old in sorted(names & {NAME, "ck_dispatcher_jobs_ck_dispatcher_jobs_status"}):
                batch.drop_constraint(op.f(old), type_="check")
            batch.create_check_constraint(op.f(NAME), sa.text(check))
        for statement in SQLITE_COUNT_TRIGGERS:  # the copy lost them
            op.execute(statement)
        return
    partitioned = bind.exec_driver_sql(
        "SELECT relkind = 'p' FROM pg_class WHERE oid = 'dispatcher_jobs'::regclass"
    ).scalar()
    op.execute(f"ALTER TABLE dispatcher_jobs DROP CONSTRAINT IF EXISTS {NAME}")
    if partitioned:
        op.execute(f"ALTER TABLE dispatcher_jobs ADD CONSTRAINT {NAME} CHECK ({check})")
        return
    op.execute(f"ALTER TABLE dispatcher_jobs ADD CONSTRAINT {NAME} CHECK ({check}) NOT VALID")
    op.execute(f"ALTER TABLE dispatcher_jobs VALIDATE CONSTRAINT {NAME}")


def _ordering_index(live: str) -> None:
    op.drop_index("ix_dispatcher_jobs_ordering", table_name="dispatcher_jobs")
    where = sa.text(f"ordering_key IS NOT NULL AND {live}")
    op.create_index(
        "ix_dispatcher_jobs_ordering",
        "dispatcher_jobs",
        ["queue", "ordering_key", "id"],
        postgresql_where=where,
        sqlite_where=where,
    )


def _run(script: str) -> None:
    """A script as it is, through the driver's cursor (no placeholders read), PostgreSQL only."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    cursor = bind.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(script)
    finally:
        cursor.close()


def upgrade() -> None:
    _set_check(NEW)
    _ordering_index(NEW_LIVE)
    where = sa.text("status = 'scheduled'")
    op.create_index(
        "ix_dispatcher_jobs_scheduled",
        "dispatcher_jobs",
        ["next_attempt_at"],
        postgresql_where=where,
        sqlite_where=where,
    )
    _run(FUNCTIONS)


def downgrade() -> None:
    import importlib

    before = importlib.import_module("dispatcher.migrations.versions.0010_sql_enqueue")
    _run(before.FUNCTIONS)  # a migration's own frozen text, not today's code
    op.execute("UPDATE dispatcher_jobs SET status = 'pending' WHERE status = 'scheduled'")
    op.drop_index("ix_dispatcher_jobs_scheduled", table_name="dispatcher_jobs")
    _ordering_index(OLD_LIVE)
    _set_check(OLD)
