"""The partitioned layout (PostgreSQL only): jobs and attempts in one table per creation month.

Why: past tens of millions of rows, retention by ``DELETE`` leaves autovacuum more dead tuples
than it cleans up; dropping a month is one statement and leaves none. ``dispatcher_jobs`` is
partitioned by ``RANGE (created_at)`` and ``dispatcher_attempts`` by ``RANGE (started_at)``, one
partition a month (``dispatcher_jobs_p2026_11``), and the tables of the unpartitioned layout
become one ``..._legacy`` partition each, below the first month.

- A month of jobs goes (``DROP TABLE``) once the whole month is older than the retention, none
  of its jobs is live and none changed since the retention's cutoff; its per-queue counts leave
  ``dispatcher_counts`` in the same transaction (a ``DROP`` fires no trigger). A month of
  attempts goes once every month of jobs up to it is gone (an attempt starts after its job was
  created, so attempts of month M belong to jobs of month M or earlier). The legacy partitions
  keep the batched retention and go when it has emptied them.
- Dedupe: a partitioned table cannot have a unique index without its partition key, so
  ``dispatcher_dedupe (queue, dedupe_key)`` holds every key of an existing job; a BEFORE INSERT
  trigger claims the key there and skips the row (returns NULL) when it is taken, which is what
  the producers' ``ON CONFLICT DO NOTHING`` does on the unpartitioned layout. An AFTER DELETE
  trigger gives a key back when its job is deleted; dropping a month deletes its keys.

The planning (which months to create, which may go) is plain functions; the I/O is below them.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dispatcher import outbox
from dispatcher.db import utcnow
from dispatcher.schema import COUNT_TRIGGERS, DEDUPE_WHERE, LIVE_WHERE, count_triggers

log = logging.getLogger("dispatcher.partitions")

JOBS, ATTEMPTS, DEDUPE = "dispatcher_jobs", "dispatcher_attempts", "dispatcher_dedupe"
KEY = {JOBS: "created_at", ATTEMPTS: "started_at"}  # each table's partition key
LEGACY = "_legacy"
STAGING = "_part"  # the new parents' names until the switch
MONTHS_AHEAD = 2
# The first month partition starts at a month's start at least this far ahead, so producers never
# write a row past the old table's CHECK while the conversion runs.
MARGIN = timedelta(days=1)
LOCK_TIMEOUT = 1.0  # seconds a DDL statement may queue producers behind it before it retries


class NotSupported(RuntimeError):
    """The partitioned layout needs PostgreSQL."""


# --------------------------------------------------------------------------- planning (pure)


def month_of(when: datetime) -> date:
    return when.astimezone(UTC).date().replace(day=1)


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def start_of(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def partition_name(table: str, month: date) -> str:
    return f"{table}_p{month.year:04d}_{month.month:02d}"


def month_in(table: str, name: str) -> date | None:
    """The month of partition ``name`` of ``table`` (None: not a month partition)."""
    found = re.fullmatch(re.escape(table) + r"_p(\d{4})_(\d{2})", name)
    return date(int(found[1]), int(found[2]), 1) if found else None


def first_month(now: datetime, margin: timedelta = MARGIN) -> date:
    """Where the month partitions of a conversion at ``now`` begin (the legacy one ends)."""
    return add_months(month_of(now + margin), 1)


def months_to_create(
    existing: Iterable[date], first: date, now: datetime, ahead: int = MONTHS_AHEAD
) -> list[date]:
    """Every missing month from ``first`` through ``ahead`` months past ``now``'s."""
    have, last = set(existing), add_months(month_of(now), ahead)
    months, month = [], first
    while month <= max(last, first):
        if month not in have:
            months.append(month)
        month = add_months(month, 1)
    return months


def old_enough(months: Iterable[date], now: datetime, retention: timedelta) -> list[date]:
    """Months of jobs wholly older than the retention: the candidates for a drop (oldest first)."""
    cutoff = now - retention
    return sorted(m for m in months if start_of(add_months(m, 1)) <= cutoff)


def attempts_to_drop(
    attempt_months: Iterable[date], job_months: Iterable[date], legacy_jobs: bool
) -> list[date]:
    """Months of attempts whose jobs are all gone: no jobs partition of that month or earlier
    (the legacy one included) is left."""
    if legacy_jobs:
        return []
    left = min(job_months, default=None)
    return sorted(m for m in attempt_months if left is None or m < left)


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True, slots=True)
class Layout:
    """What a partitioned database holds now."""

    job_months: tuple[date, ...]
    attempt_months: tuple[date, ...]
    legacy_jobs: bool
    legacy_attempts: bool
    legacy_bound: datetime | None  # where the legacy partitions end


def is_partitioned(conn: sa.Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.exec_driver_sql(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass('dispatcher_jobs')"
    ).scalar()
    return kind == "p"


def _children(conn: sa.Connection, table: str) -> dict[str, str]:
    """Partition name -> its bound's SQL."""
    rows = conn.exec_driver_sql(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%(t)s)",
        {"t": table},
    )
    return {r[0]: r[1] for r in rows}


def layout(conn: sa.Connection) -> Layout:
    jobs, attempts = _children(conn, JOBS), _children(conn, ATTEMPTS)
    bound = None
    if JOBS + LEGACY in jobs:
        found = re.search(r"TO \('([^']+)'\)", jobs[JOBS + LEGACY])
        bound = datetime.fromisoformat(found[1]).astimezone(UTC) if found else None
    return Layout(
        job_months=tuple(sorted(m for n in jobs if (m := month_in(JOBS, n)) is not None)),
        attempt_months=tuple(sorted(m for n in attempts if (m := month_in(ATTEMPTS, n)))),
        legacy_jobs=JOBS + LEGACY in jobs,
        legacy_attempts=ATTEMPTS + LEGACY in attempts,
        legacy_bound=bound,
    )


def _require_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        raise NotSupported(
            f"the partitioned layout needs PostgreSQL; this outbox is on {engine.dialect.name}"
        )
    with engine.connect() as conn:
        version = int(conn.exec_driver_sql("SHOW server_version_num").scalar_one())
    if version < 140000:  # DETACH PARTITION ... CONCURRENTLY: see drop_behind
        raise NotSupported(
            f"the partitioned layout needs PostgreSQL 14 or newer; this server is {version}"
        )


def _set_lock_timeout(conn: sa.Connection, seconds: float) -> None:
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'")


def _is_lock_timeout(exc: sa.exc.DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "55P03"  # lock_not_available


def _with_retries(
    engine: Engine,
    work: Callable[[sa.Connection], object],
    lock_timeout: float,
    tries: int,
    what: str,
) -> None:
    """``work`` in a transaction whose locks wait at most ``lock_timeout``: producers queue
    behind a waiting DDL statement, so it gives up quickly and tries again a little later."""
    for attempt in range(1, tries + 1):
        try:
            with engine.begin() as conn:
                _set_lock_timeout(conn, lock_timeout)
                work(conn)
            return
        except sa.exc.DBAPIError as exc:
            if not _is_lock_timeout(exc) or attempt == tries:
                raise
            log.info(
                "%s: lock not granted within %gs (try %d); retrying", what, lock_timeout, attempt
            )
            time.sleep(min(0.1 * attempt, 2.0))


def _create_months(conn: sa.Connection, parents: Sequence[str], months: Iterable[date]) -> None:
    for month in months:
        low, high = start_of(month), start_of(add_months(month, 1))
        for parent in parents:
            table = parent.removesuffix(STAGING)
            conn.exec_driver_sql(
                f"CREATE TABLE IF NOT EXISTS {partition_name(table, month)} PARTITION OF {parent} "
                f"FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
            )


def create_months(engine: Engine, months: Iterable[date]) -> None:
    """Create these months of both tables (if missing), e.g. past months to load history into."""
    with engine.begin() as conn:
        _create_months(conn, (JOBS, ATTEMPTS), months)


# --------------------------------------------------------------------------- dedupe

_DEDUPE_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {DEDUPE} (
        queue varchar(64) NOT NULL, dedupe_key varchar(255) NOT NULL, job_id bigint NOT NULL,
        created_at timestamptz NOT NULL, CONSTRAINT pk_{DEDUPE} PRIMARY KEY (queue, dedupe_key))""",
    f"CREATE INDEX IF NOT EXISTS ix_{DEDUPE}_created_at ON {DEDUPE} (created_at)",
    # Claim the key or skip the row, as ON CONFLICT DO NOTHING does (a concurrent insert of the
    # same key waits for the first one's transaction, then skips: one job).
    f"""CREATE OR REPLACE FUNCTION {DEDUPE}_claim() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO {DEDUPE} (queue, dedupe_key, job_id, created_at)
        VALUES (NEW.queue, NEW.dedupe_key, NEW.id, NEW.created_at) ON CONFLICT DO NOTHING;
        IF FOUND THEN RETURN NEW; END IF;
        RETURN NULL;
    END $$""",
    # The old table's rows during the conversion (its unique index still decides there).
    f"""CREATE OR REPLACE FUNCTION {DEDUPE}_track() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO {DEDUPE} (queue, dedupe_key, job_id, created_at)
        VALUES (NEW.queue, NEW.dedupe_key, NEW.id, NEW.created_at) ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$""",
    f"""CREATE OR REPLACE FUNCTION {DEDUPE}_release() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM {DEDUPE}
        WHERE queue = OLD.queue AND dedupe_key = OLD.dedupe_key AND job_id = OLD.id;
        RETURN NULL;
    END $$""",
)


# --------------------------------------------------------------------------- conversion


@dataclass(slots=True)
class Converted:
    done: bool  # False: it was partitioned already
    first: date | None = None
    months: list[date] = field(default_factory=list)
    switch_seconds: float = 0.0


def _indexes(conn: sa.Connection, table: str) -> list[tuple[str, str, bool]]:
    """(name, definition, is the primary key's) of ``table``'s valid indexes."""
    rows = conn.exec_driver_sql(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisprimary FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(%(t)s) "
        "AND i.indisvalid ORDER BY c.relname",
        {"t": table},
    )
    return [(r[0], r[1], r[2]) for r in rows]


def _parent_indexes(conn: sa.Connection, table: str) -> list[tuple[str, str]]:
    """The new parent's indexes (name, definition): the old table's, the dedupe key's made
    non-unique (the side table keeps it unique); the primary key is added apart."""
    out = []
    for name, sql, primary in _indexes(conn, table):
        if primary or name.endswith(LEGACY) or "_legacy_" in name:
            continue
        if name == f"uq_{JOBS}_dedupe":
            name, sql = f"ix_{JOBS}_dedupe", sql.replace("CREATE UNIQUE INDEX", "CREATE INDEX")
            sql = sql.replace(f"uq_{JOBS}_dedupe", name)
        elif sql.startswith("CREATE UNIQUE"):
            raise NotSupported(f"{table}: unique index {name} cannot be partitioned")
        out.append((name, sql))
    return out


def _stage(conn: sa.Connection, first: date, months: Sequence[date]) -> None:
    """Empty partitioned parents beside today's tables, with their indexes, triggers and months
    (dropped and made again if an interrupted run left them)."""
    for table in (JOBS, ATTEMPTS):
        staging, key = table + STAGING, KEY[table]
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {staging}")
        conn.exec_driver_sql(
            f"CREATE TABLE {staging} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            f"PARTITION BY RANGE ({key})"
        )
        conn.exec_driver_sql(f"ALTER TABLE {staging} DROP CONSTRAINT IF EXISTS ck_{table}_legacy")
        conn.exec_driver_sql(
            f"ALTER TABLE {staging} ADD CONSTRAINT pk_{table}{STAGING} PRIMARY KEY (id, {key})"
        )
        for name, sql in _parent_indexes(conn, table):
            how = re.sub(r"^CREATE INDEX \S+ ON (ONLY )?\S+ ", "", sql)  # USING ... [WHERE ...]
            conn.exec_driver_sql(f"CREATE INDEX {name}{STAGING} ON {staging} {how}")
    conn.exec_driver_sql(
        f"CREATE TRIGGER {DEDUPE}_claim BEFORE INSERT ON {JOBS}{STAGING} FOR EACH ROW "
        f"WHEN (NEW.{DEDUPE_WHERE}) EXECUTE FUNCTION {DEDUPE}_claim()"
    )
    conn.exec_driver_sql(
        f"CREATE TRIGGER {DEDUPE}_release AFTER DELETE ON {JOBS}{STAGING} FOR EACH ROW "
        f"WHEN (OLD.{DEDUPE_WHERE}) EXECUTE FUNCTION {DEDUPE}_release()"
    )
    for statement in count_triggers("postgresql", JOBS + STAGING):  # the counts go along
        conn.exec_driver_sql(statement)
    _create_months(conn, (JOBS + STAGING, ATTEMPTS + STAGING), months)


def _concurrent_index(engine: Engine, name: str, sql: str) -> None:
    """``CREATE INDEX CONCURRENTLY`` (writes go on meanwhile); an invalid leftover of an
    interrupted run is dropped first."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        valid = conn.exec_driver_sql(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%(n)s)", {"n": name}
        ).scalar()
        if valid:
            return
        if valid is not None:
            conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY {name}")
        conn.exec_driver_sql(sql.replace("INDEX", f"INDEX CONCURRENTLY {name}", 1))


def _switch(conn: sa.Connection, first: date) -> None:
    """The one short transaction: today's tables become the legacy partitions of the new
    parents, which take their names. Every statement here changes only the catalog."""
    bound = start_of(first).isoformat()
    conn.exec_driver_sql(f"LOCK TABLE {JOBS}, {ATTEMPTS} IN ACCESS EXCLUSIVE MODE")
    conn.exec_driver_sql(f"ALTER TABLE {ATTEMPTS} DROP CONSTRAINT IF EXISTS fk_{ATTEMPTS}_job_id")
    conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {DEDUPE}_track ON {JOBS}")
    for op in COUNT_TRIGGERS:  # the new parent counts every row; a partition's own would twice
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS dispatcher_jobs_count_{op} ON {JOBS}")
    for table in (JOBS, ATTEMPTS):
        unique = f"uq_{table}_legacy_id"
        conn.exec_driver_sql(
            f"ALTER TABLE {table} ADD CONSTRAINT {unique} UNIQUE USING INDEX {unique}"
        )
        old_indexes = [name for name, _, _ in _indexes(conn, table)]
        new_indexes = [name for name, _, _ in _indexes(conn, table + STAGING)]
        sequence = conn.exec_driver_sql(
            "SELECT pg_get_serial_sequence(%(t)s, 'id')", {"t": table}
        ).scalar()
        conn.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {table}{LEGACY}")
        for name in old_indexes:
            if LEGACY not in name:
                conn.exec_driver_sql(f"ALTER INDEX {name} RENAME TO {name}{LEGACY}")
        conn.exec_driver_sql(f"ALTER TABLE {table}{STAGING} RENAME TO {table}")
        for name in new_indexes:
            conn.exec_driver_sql(f"ALTER INDEX {name} RENAME TO {name.removesuffix(STAGING)}")
        if sequence:  # new ids continue the old ones; the sequence outlives the legacy table
            conn.exec_driver_sql(f"ALTER SEQUENCE {sequence} OWNED BY {table}.id")
        conn.exec_driver_sql(
            f"ALTER TABLE {table} ATTACH PARTITION {table}{LEGACY} "
            f"FOR VALUES FROM (MINVALUE) TO ('{bound}')"
        )


def convert(
    engine: Engine,
    *,
    now: datetime | None = None,
    months_ahead: int = MONTHS_AHEAD,
    lock_timeout: float = LOCK_TIMEOUT,
    tries: int = 30,
    say: Callable[[str], None] = log.info,
) -> Converted:
    """Convert today's tables to the partitioned layout while producers and workers go on.

    Only brief catalog changes lock the tables (each waits at most ``lock_timeout`` for its lock,
    then retries): the CHECKs' ``NOT VALID`` additions, the old table's dedupe trigger, and the
    switch. The scans (the dedupe backfill, ``VALIDATE``, ``CREATE INDEX CONCURRENTLY``) let
    writes through. Running it again on a converted database does nothing.
    """
    _require_postgresql(engine)
    now = now or utcnow()
    with engine.connect() as conn:
        if is_partitioned(conn):
            return Converted(done=False)
    first = first_month(now)
    months = months_to_create((), first, now, months_ahead)
    bound = start_of(first).isoformat()
    say(f"month partitions from {first:%Y-%m}; today's tables become the legacy partitions")

    with engine.begin() as conn:
        for ddl in _DEDUPE_DDL:
            conn.exec_driver_sql(ddl)
        _stage(conn, first, months)

    def prepare_old_tables(conn: sa.Connection) -> None:
        conn.exec_driver_sql(
            f"CREATE OR REPLACE TRIGGER {DEDUPE}_track AFTER INSERT ON {JOBS} FOR EACH ROW "
            f"WHEN (NEW.{DEDUPE_WHERE}) EXECUTE FUNCTION {DEDUPE}_track()"
        )
        for table in (JOBS, ATTEMPTS):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS ck_{table}_legacy")
            conn.exec_driver_sql(
                f"ALTER TABLE {table} ADD CONSTRAINT ck_{table}_legacy "
                f"CHECK ({KEY[table]} < '{bound}') NOT VALID"
            )

    _with_retries(engine, prepare_old_tables, lock_timeout, tries, "prepare")
    say("checks added; copying dedupe keys and validating (writes go on)")
    with engine.begin() as conn:  # keys inserted from here on, the trigger copies
        conn.exec_driver_sql(
            f"INSERT INTO {DEDUPE} (queue, dedupe_key, job_id, created_at) "
            f"SELECT queue, dedupe_key, id, created_at FROM {JOBS} WHERE {DEDUPE_WHERE} "
            "ON CONFLICT DO NOTHING"
        )
    for table in (JOBS, ATTEMPTS):
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {table} VALIDATE CONSTRAINT ck_{table}_legacy")
    # What ATTACH needs on the old tables to adopt the parents' indexes instead of building them.
    _concurrent_index(
        engine, f"uq_{JOBS}_legacy_id", f"CREATE UNIQUE INDEX ON {JOBS} (id, created_at)"
    )
    _concurrent_index(
        engine, f"uq_{ATTEMPTS}_legacy_id", f"CREATE UNIQUE INDEX ON {ATTEMPTS} (id, started_at)"
    )
    _concurrent_index(
        engine,
        f"ix_{JOBS}_legacy_dedupe",
        f"CREATE INDEX ON {JOBS} (queue, dedupe_key) WHERE {DEDUPE_WHERE}",
    )
    say("switching (one short transaction)")
    started = time.monotonic()
    _with_retries(engine, lambda conn: _switch(conn, first), lock_timeout, tries, "switch")
    took = time.monotonic() - started
    say(f"partitioned: switched in {took:.3f}s")
    return Converted(done=True, first=first, months=months, switch_seconds=took)


# --------------------------------------------------------------------------- maintenance


@dataclass(slots=True)
class Maintained:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # partition -> why it was not dropped


def ensure_ahead(
    engine: Engine,
    now: datetime,
    months_ahead: int = MONTHS_AHEAD,
    lock_timeout: float = LOCK_TIMEOUT,
) -> list[str]:
    """Create the months of both tables from the first through ``months_ahead`` past now's."""
    with engine.connect() as conn:
        have = layout(conn)
    known = set(have.job_months) & set(have.attempt_months)
    first = min(have.job_months, default=month_of(now))
    months = months_to_create(known, first, now, months_ahead)
    if not months:
        return []
    _with_retries(
        engine,
        lambda conn: _create_months(conn, (JOBS, ATTEMPTS), months),
        lock_timeout,
        3,
        "create",
    )
    return [partition_name(t, m) for m in months for t in (JOBS, ATTEMPTS)]


# Dropping a month. ``DROP TABLE`` of an attached partition, and a ``SHARE`` lock on one to check
# it, both wait for every transaction using the parent (an UPDATE by id, a claim or a record,
# locks every month) and meanwhile hold back every producer and worker behind them: under steady
# traffic the lock is never granted, and each try stalls the outbox for the lock timeout. So a
# month is first detached with ``DETACH PARTITION ... CONCURRENTLY`` (PostgreSQL 14+), which waits
# for those transactions without blocking anyone and then takes the month out of what new ones
# see; then, on the detached table that nobody else reads or writes any more, it is checked,
# counted and dropped in one transaction, or attached again if a race made it keep (a job
# replayed just before the detach).
DETACH_TIMEOUT = 60.0  # seconds the detach may wait for the transactions using the parent


def _finish_detaches(conn: sa.Connection) -> None:
    """Complete a ``DETACH ... CONCURRENTLY`` that was interrupted (it leaves the partition
    pending: hidden from new queries, still attached)."""
    for parent, name in conn.exec_driver_sql(
        "SELECT p.relname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE i.inhdetachpending "
        "AND p.relname IN (%(j)s, %(a)s)",
        {"j": JOBS, "a": ATTEMPTS},
    ).all():
        conn.exec_driver_sql(f"ALTER TABLE {parent} DETACH PARTITION {name} FINALIZE")


def _detach(engine: Engine, parent: str, name: str) -> None:
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(f"SET lock_timeout = '{int(DETACH_TIMEOUT * 1000)}ms'")
        try:
            _finish_detaches(conn)
            if name in _children(conn, parent):
                conn.exec_driver_sql(f"ALTER TABLE {parent} DETACH PARTITION {name} CONCURRENTLY")
        finally:
            conn.exec_driver_sql("RESET lock_timeout")


def _detached(conn: sa.Connection) -> list[str]:
    """Our month or legacy tables that are no partition (a drop interrupted after the detach)."""
    return list(
        conn.exec_driver_sql(
            "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' "
            "AND c.relnamespace = current_schema()::regnamespace "
            "AND (c.relname ~ %(m)s OR c.relname IN (%(jl)s, %(al)s)) "
            "AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid) ORDER BY 1",
            {
                "m": f"^({JOBS}|{ATTEMPTS})_p[0-9]{{4}}_[0-9]{{2}}$",
                "jl": JOBS + LEGACY,
                "al": ATTEMPTS + LEGACY,
            },
        ).scalars()
    )


def _range_of(conn: sa.Connection, name: str) -> tuple[str | None, str]:
    """``(low, high)`` of the partition ``name`` (attached or not): a month's from its name, the
    legacy partition's (low: None, unbounded) from the CHECK the conversion gave it."""
    table = JOBS if name.startswith(JOBS) else ATTEMPTS
    month = month_in(table, name)
    if month is not None:
        return start_of(month).isoformat(), start_of(add_months(month, 1)).isoformat()
    check = conn.exec_driver_sql(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %(c)s",
        {"c": f"ck_{table}_legacy"},
    ).scalar_one()
    found = re.search(r"'([^']+)'", check)
    assert found is not None, check
    return None, found[1]


def _bound_of(conn: sa.Connection, name: str) -> str:
    """The partition bound to attach ``name`` again with."""
    low, high = _range_of(conn, name)
    return f"FOR VALUES FROM ({'MINVALUE' if low is None else repr(low)}) TO ('{high}')"


def _why_keep(
    conn: sa.Connection, name: str, cutoff: datetime | None, *, scan: bool = True
) -> str | None:
    """Why the jobs table ``name`` must stay (None: it may go). ``cutoff`` None: the legacy
    partition, which goes only empty. ``scan=False`` leaves out the one check that reads the
    whole month (a job changed within the retention): the quick look before the detach."""
    if cutoff is None:
        if conn.exec_driver_sql(f"SELECT 1 FROM {name} LIMIT 1").first():
            return "not empty yet (the batched retention empties it)"
        return None
    if conn.exec_driver_sql(f"SELECT 1 FROM {name} WHERE {LIVE_WHERE} LIMIT 1").first():
        return "holds a live job"
    if (
        scan
        and conn.exec_driver_sql(
            f"SELECT 1 FROM {name} WHERE updated_at >= %(c)s LIMIT 1", {"c": cutoff}
        ).first()
    ):
        return "a job changed within the retention"
    return None


def _drop_detached_jobs(conn: sa.Connection, name: str, cutoff: datetime | None) -> str | None:
    """Drop the detached jobs table ``name`` with its counts, or attach it again and say why."""
    conn.exec_driver_sql(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")  # nobody else uses it
    why = _why_keep(conn, name, cutoff)
    if why is not None:
        conn.exec_driver_sql(f"ALTER TABLE {JOBS} ATTACH PARTITION {name} {_bound_of(conn, name)}")
        conn.exec_driver_sql(  # the keys taken away before the detach (see _drop_jobs)
            f"INSERT INTO {DEDUPE} (queue, dedupe_key, job_id, created_at) "
            f"SELECT queue, dedupe_key, id, created_at FROM {name} WHERE {DEDUPE_WHERE} "
            "ON CONFLICT DO NOTHING"
        )
        return why
    gone: Counter[tuple[str, str]] = Counter()
    for queue, status, n in conn.exec_driver_sql(
        f"SELECT queue, status, count(*) FROM {name} GROUP BY 1, 2"
    ):
        gone[(queue, status)] += n
    conn.exec_driver_sql(f"DROP TABLE {name}")
    outbox.count_dropped(conn, gone)
    return None


def _drop_jobs(
    engine: Engine, name: str, cutoff: datetime | None, lock_timeout: float
) -> str | None:
    """Detach the jobs partition ``name`` and drop it (None), or say why it stays."""
    with engine.connect() as conn:  # the common reasons to keep it, from the live index
        early = _why_keep(conn, name, cutoff, scan=False)
    if early is not None:
        return early
    with engine.begin() as conn:
        # Its keys go first: a producer re-using one meanwhile makes a new job (the old one is
        # past the retention) instead of finding a key whose job it cannot see. A key's row
        # carries its job's created_at, so the partition's bound selects them (an index).
        low, high = _range_of(conn, name)
        conn.exec_driver_sql(
            f"DELETE FROM {DEDUPE} WHERE created_at < %(high)s"
            + ("" if low is None else " AND created_at >= %(low)s"),
            {"low": low, "high": high},
        )
    _detach(engine, JOBS, name)
    why: str | None = None

    def drop(conn: sa.Connection) -> None:
        nonlocal why
        why = _drop_detached_jobs(conn, name, cutoff)

    _with_retries(engine, drop, lock_timeout, 3, f"drop {name}")
    return why


def _drop_table(engine: Engine, parent: str, name: str) -> None:
    _detach(engine, parent, name)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")


MAINTAINER_LOCK = 0x6563647001  # pg_try_advisory_lock: one maintainer drops at a time


def drop_behind(
    engine: Engine, now: datetime, retention: timedelta, lock_timeout: float = LOCK_TIMEOUT
) -> Maintained:
    """Drop the months of jobs the retention no longer keeps, the attempts whose jobs are all
    gone, and the legacy partitions once the batched retention has emptied them. Nothing here
    holds producers or workers back (see ``DETACH_TIMEOUT``'s comment). With several sweepers,
    one does it and the others skip their round."""
    with engine.connect() as guard:
        guard.execution_options(isolation_level="AUTOCOMMIT")
        if not guard.exec_driver_sql(
            "SELECT pg_try_advisory_lock(%s)", (MAINTAINER_LOCK,)
        ).scalar():
            return Maintained(kept={"*": "another sweeper is maintaining the partitions"})
        try:
            return _drop_behind(engine, now, retention, lock_timeout)
        finally:
            guard.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (MAINTAINER_LOCK,))


def _drop_behind(
    engine: Engine, now: datetime, retention: timedelta, lock_timeout: float
) -> Maintained:
    done = Maintained()
    cutoff = now - retention
    with engine.begin() as conn:
        _finish_detaches(conn)
        leftovers = _detached(conn)
    for name in leftovers:  # an earlier round stopped between its detach and its drop
        if name.startswith(ATTEMPTS):
            _drop_table(engine, ATTEMPTS, name)
            done.dropped.append(name)
            continue
        with engine.begin() as conn:
            legacy = name == JOBS + LEGACY
            why = _drop_detached_jobs(conn, name, None if legacy else cutoff)
        if why is None:
            done.dropped.append(name)
        else:
            done.kept[name] = why
    with engine.connect() as conn:
        have = layout(conn)
    job_months = set(have.job_months)
    for month in old_enough(have.job_months, now, retention):
        name = partition_name(JOBS, month)
        why = _drop_jobs(engine, name, cutoff, lock_timeout)
        if why is None:
            done.dropped.append(name)
            job_months.discard(month)
        else:
            done.kept[name] = why
    legacy_jobs = have.legacy_jobs
    if legacy_jobs:
        why = _drop_jobs(engine, JOBS + LEGACY, None, lock_timeout)
        if why is None:
            done.dropped.append(JOBS + LEGACY)
            legacy_jobs = False
        else:
            done.kept[JOBS + LEGACY] = why
    drops = [
        partition_name(ATTEMPTS, m)
        for m in attempts_to_drop(have.attempt_months, job_months, legacy_jobs)
    ]
    if have.legacy_attempts and not legacy_jobs:
        drops.insert(0, ATTEMPTS + LEGACY)
    for name in drops:
        _drop_table(engine, ATTEMPTS, name)
        done.dropped.append(name)
    return done


def batched_scope(conn: sa.Connection) -> tuple[bool, datetime | None]:
    """What the batched retention may delete: (run it?, only jobs created before this). On the
    partitioned layout only the legacy partition, whose rows no month drop removes."""
    if not is_partitioned(conn):
        return True, None
    bound = layout(conn).legacy_bound
    return bound is not None, bound


class Maintainer:
    """The sweeper's partition upkeep (see :mod:`dispatcher.sweeper`): once every ``interval``
    seconds, on the partitioned layout, create months ahead and drop what the retention lets go.
    Does nothing on the unpartitioned layout or SQLite."""

    def __init__(
        self,
        engine: Engine,
        retention: timedelta | None,
        *,
        months_ahead: int = MONTHS_AHEAD,
        interval: float = 3600.0,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.retention = retention
        self.months_ahead = months_ahead
        self.interval = interval
        self._clock = clock
        self._monotonic = monotonic
        self._next_at = float("-inf")

    def run_once(self) -> Maintained | None:
        """One round, if it is time for one; what it did (None: not time yet)."""
        if self._monotonic() < self._next_at:
            return None
        self._next_at = self._monotonic() + self.interval
        if self.engine.dialect.name != "postgresql":
            return Maintained()
        with self.engine.connect() as conn:
            if not is_partitioned(conn):
                return Maintained()
        now = self._clock()
        created = ensure_ahead(self.engine, now, self.months_ahead)
        done = drop_behind(self.engine, now, self.retention) if self.retention else Maintained()
        done.created = created
        for name in done.dropped:
            log.info("partitions: dropped %s", name, extra={"partition": name})
        for name in created:
            log.info("partitions: created %s", name, extra={"partition": name})
        return done
