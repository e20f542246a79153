"""Forget a customer (GDPR art. 17): erase their personal data from every outbox table.

The customer is named by one identifier an ECDP body carries (:data:`IDENTIFIER_KINDS`); an
email also matches its MD5 and SHA-256 forms, and a hash also matches the jobs whose email
hashes to it. :func:`forget` walks the jobs table in primary-key
ranges, one short transaction each, and for every job:

- of that customer (its body names them): the body becomes :data:`ERASED_PAYLOAD`, the email
  column and a dedupe key that carries an identifier are cleared, its last error and its attempts'
  errors and response bodies become :data:`ERASED`. A waiting job (scheduled, pending, retrying) is
  cancelled, so it is never sent. A job in flight keeps its status (its request may be on the
  wire; its worker records the answer as usual) but loses its data all the same: if the API's
  answer makes it retry, the next attempt sends the erased stub, which the API refuses, never
  the customer's data. Its answer may echo an identifier into the new attempt row: run forget
  again once it has finished (the result counts them in ``in_flight``).
- of another customer that mentions an identifier (in a data field, an error, a dedupe key):
  the identifier is cut out of that text, the rest stays.

Then the attempts of other jobs and the queues' pause and circuit reasons lose any mention too.
Jobs stay (only their data goes), so every count and the history's shape stay right; the
cancelled ones are counted in ``dispatcher_counts`` in the transaction that cancels them. One
``dispatcher_erasures`` row records what kind of identifier was forgotten, when, and how many
rows changed; never the identifier. On PostgreSQL the old row versions are vacuumed at the end.

The matching is pure (:class:`Customer`); only :func:`forget` does I/O. Free-text mentions are
searched for an identifier that cannot occur by chance: an email or a hash always, a phone or a
CRM id of at least :data:`MIN_MENTION` characters; a customer id (a bare number) only in bodies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dispatcher import outbox
from dispatcher.admin.actions import vacuum
from dispatcher.admin.filters import AdminError, check_int, check_time
from dispatcher.admin.results import ForgetResult
from dispatcher.partitions import DEDUPE
from dispatcher.schema import (
    WAITING_STATUSES,
    JobStatus,
    attempts,
    erasures,
    jobs,
    queues,
)

__all__ = [
    "ERASED",
    "ERASED_PAYLOAD",
    "IDENTIFIER_KINDS",
    "Customer",
    "forget",
    "parse_customer",
]

log = logging.getLogger("dispatcher.admin")

# The identifiers an ECDP custom event names its customer by: kind -> the body's key.
IDENTIFIER_KINDS: dict[str, str] = {
    "email": "customerEmail",
    "customer_id": "customerId",
    "phone": "customerPhone",
    "crm_id": "customerCrmId",
    "email_md5": "customerEmailMd5",
    "email_sha256": "customerEmailSha256",
}
ERASED = "[erased]"
ERASED_PAYLOAD = '{"erased":true}'
MIN_MENTION = 6  # a shorter phone or CRM id is erased from bodies only (it could be anything)
BATCH_IDS = 5_000  # job ids (and attempt ids) per transaction
_MAX_LENGTH = {"email": 320, "phone": 20, "crm_id": 128}
_HEX = re.compile(r"^[0-9a-f]+$")
_PHONE = re.compile(r"^[0-9+\-() ]+$")


def _digits(phone: str) -> str:
    return re.sub(r"[^0-9+]", "", phone)


@dataclass(frozen=True, slots=True)
class Customer:
    """One customer, by one identifier (``kind`` in :data:`IDENTIFIER_KINDS`), normalised."""

    kind: str
    value: str

    def _body_values(self) -> dict[str, set[str]]:
        """The body keys that name this customer, each with the values (lower-cased for emails
        and hashes) that mean them."""
        if self.kind == "email":
            forms = {self.value}
            return {
                "customerEmail": forms,
                "customerEmailMd5": {hashlib.md5(v.encode()).hexdigest() for v in forms},
                "customerEmailSha256": {hashlib.sha256(v.encode()).hexdigest() for v in forms},
            }
        return {IDENTIFIER_KINDS[self.kind]: {self.value}}

    def owns(self, payload: str) -> bool:
        """Whether ``payload`` (a job's body) is this customer's: one of its identifiers is
        theirs (emails and hashes ignoring case, phones ignoring spaces and punctuation)."""
        try:
            body = json.loads(payload)
        except ValueError:
            return False
        if not isinstance(body, dict):
            return False
        for key, values in self._body_values().items():
            found = body.get(key)
            if found is None or isinstance(found, bool):
                continue
            if self.kind == "customer_id":
                if isinstance(found, int) and str(found) in values:
                    return True
            elif isinstance(found, str):
                if self.kind == "phone" and _digits(found) == _digits(self.value):
                    return True
                if self.kind in ("email", "email_md5", "email_sha256") and found.lower() in values:
                    return True
                if found in values:
                    return True
        return False

    def owns_email(self, email: str | None) -> bool:
        """Whether a job's ``customer_email`` column (lower-cased) is theirs: the address, or
        for a hash, the address that hashes to it (so a hash finds the jobs sent by email)."""
        if email is None or self.kind not in ("email", "email_md5", "email_sha256"):
            return False
        if self.kind == "email":
            return email == self.value
        digest = hashlib.md5 if self.kind == "email_md5" else hashlib.sha256
        return digest(email.encode()).hexdigest() == self.value

    def body_patterns(self) -> list[str]:
        """Text a body of theirs contains (``"key":value`` as the producer writes it, compact);
        a LIKE on these finds the candidates :meth:`owns` then decides on."""
        out: list[str] = []
        for key, values in self._body_values().items():
            for v in sorted(values):
                if self.kind == "customer_id":
                    out.append(f'"{key}":{v}')
                elif self.kind == "phone":
                    out.append(f'"{key}":"')  # spellings differ: every phone body is a candidate
                else:
                    out.append(f'"{key}":{json.dumps(v, ensure_ascii=False)}')
        return sorted(set(out))

    def needles(self) -> list[str]:
        """The identifier's texts to cut out of free text (ignoring case), longest first."""
        if self.kind == "customer_id":
            return []
        found = {v for values in self._body_values().values() for v in values}
        if self.kind in ("phone", "crm_id"):
            found = {v for v in found if len(v) >= MIN_MENTION}
        return sorted(found, key=lambda v: (-len(v), v))

    def scrub(self, text: str | None) -> str | None:
        """``text`` with every needle replaced by :data:`ERASED`."""
        if text is None:
            return None
        for needle in self.needles():
            text = re.sub(re.escape(needle), ERASED, text, flags=re.IGNORECASE)
        return text


def parse_customer(given: Mapping[str, str | int | None]) -> Customer:
    """Exactly one identifier of :data:`IDENTIFIER_KINDS` (as text, or an int customer id) ->
    :class:`Customer`; :class:`AdminError` naming the field otherwise."""
    chosen = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(set(chosen) - set(IDENTIFIER_KINDS))
    if unknown:
        raise AdminError(unknown[0][:40], "not an identifier")
    if len(chosen) != 1:
        raise AdminError(
            None,
            "name the customer by exactly one of: " + ", ".join(IDENTIFIER_KINDS)
            if not chosen
            else f"one identifier at a time (got {', '.join(sorted(chosen))})",
        )
    kind, raw = next(iter(chosen.items()))
    if kind == "customer_id":
        if isinstance(raw, str) and raw.strip().lstrip("-").isdigit() and raw.strip().isascii():
            raw = int(raw.strip())
        return Customer(kind, str(check_int(kind, raw, -(2**63), 2**63 - 1)))
    if not isinstance(raw, str):
        raise AdminError(kind, f"expected text (got {type(raw).__name__})")
    text = raw.strip()
    if not text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise AdminError(kind, "empty, or control characters")
    if kind in ("email_md5", "email_sha256"):
        text = text.lower()
        size = 32 if kind == "email_md5" else 64
        if len(text) != size or not _HEX.match(text):
            raise AdminError(kind, f"expected {size} hexadecimal digits")
        return Customer(kind, text)
    if len(text) > _MAX_LENGTH[kind]:
        raise AdminError(kind, f"expected at most {_MAX_LENGTH[kind]} characters")
    if kind == "email":
        if text.count("@") != 1 or text.startswith("@") or text.endswith("@") or " " in text:
            raise AdminError(kind, "expected an address like name@example.com")
        text = text.lower()
    if kind == "phone" and (not _PHONE.match(text) or not any(c.isdigit() for c in text)):
        raise AdminError(kind, "may contain only digits, '+', '-', '(', ')' and spaces")
    return Customer(kind, text)


# --------------------------------------------------------------------------- the erasure


@dataclass
class _Tally:
    jobs: int = 0
    cancelled: int = 0
    in_flight: int = 0
    attempts: int = 0
    mentions: int = 0


def _any_contains(columns: list[Any], texts: list[str]) -> sa.ColumnElement[bool]:
    return sa.or_(sa.false(), *(c.icontains(t, autoescape=True) for c in columns for t in texts))


def forget(
    engine: sa.Engine,
    customer: Customer,
    *,
    dry_run: bool = False,
    now: datetime,
    batch_size: int = BATCH_IDS,
    progress: Callable[[int, int], None] | None = None,
) -> ForgetResult:
    """Erase ``customer``'s personal data from the outbox (see the module's docstring) and
    record the erasure; with ``dry_run``, only count what would change. ``progress(done,
    total)`` is told the job ids walked so far after each batch (attempts follow)."""
    if not isinstance(customer, Customer):
        raise AdminError(None, f"expected a Customer (got {type(customer).__name__})")
    now = check_time("now", now)
    batch_size = check_int("batch_size", batch_size, 1, 100_000)
    tally = _Tally()
    owned: set[int] = set()
    with engine.connect() as conn:
        low, high = conn.execute(sa.select(sa.func.min(jobs.c.id), sa.func.max(jobs.c.id))).one()
        a_low, a_high = conn.execute(
            sa.select(sa.func.min(attempts.c.id), sa.func.max(attempts.c.id))
        ).one()
        dedupe = _dedupe_table(conn)
        conn.rollback()

    def jobs_batch(conn: sa.Connection, start: int, stop: int) -> None:
        owned.update(_jobs_batch(conn, customer, start, stop, now, tally, dry_run, dedupe))

    _in_batches(engine, low, high, batch_size, jobs_batch, dry_run, progress)
    ids = sorted(owned)  # their own jobs' attempts: every text erased
    for at in range(0, len(ids), 1000):
        with engine.begin() as conn:
            _erase_attempts(conn, ids[at : at + 1000], tally, dry_run)
            if dry_run:
                conn.rollback()
    if customer.needles():  # other jobs' attempts: mentions cut out

        def attempts_batch(conn: sa.Connection, start: int, stop: int) -> None:
            _attempts_batch(conn, customer, owned, start, stop, tally, dry_run)

        _in_batches(engine, a_low, a_high, batch_size, attempts_batch, dry_run)
    with engine.begin() as conn:
        _queue_reasons(conn, customer, tally, dry_run)
        if dry_run:
            conn.rollback()
        else:
            conn.execute(
                erasures.insert().values(at=now, identifier_kind=customer.kind, **vars(tally))
            )
    result = ForgetResult(customer.kind, **vars(tally), dry_run=dry_run)
    if not dry_run:
        log.info(
            "admin: forgot a customer (by %s): %s",
            customer.kind,
            ", ".join(f"{n} {k}" for k, n in vars(tally).items()),
        )
        vacuum(engine, analyze=False, what="forget")  # the old row versions hold the data too
    return result


def _in_batches(
    engine: sa.Engine,
    low: int | None,
    high: int | None,
    size: int,
    work: Callable[[sa.Connection, int, int], None],
    dry_run: bool,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """``work(conn, start, stop)`` for the ids ``start < id <= stop`` of ``[low, high]``, ``size``
    at a time, each batch its own transaction (rolled back in a dry run)."""
    if low is None or high is None:
        return
    start = low - 1
    while start < high:
        stop = start + size
        with engine.begin() as conn:
            work(conn, start, stop)
            if dry_run:
                conn.rollback()
        start = stop
        if progress is not None:
            progress(min(stop, high) - low + 1, high - low + 1)


def _dedupe_table(conn: sa.Connection) -> sa.Table | None:
    """The partitioned layout's key table (dispatcher.partitions), which holds dedupe keys too."""
    if conn.dialect.name != "postgresql" or not sa.inspect(conn).has_table(DEDUPE):
        return None
    return sa.Table(
        DEDUPE,
        sa.MetaData(),
        sa.Column("queue", sa.String),
        sa.Column("dedupe_key", sa.String),
        sa.Column("job_id", sa.BigInteger),
    )


def _jobs_batch(
    conn: sa.Connection,
    customer: Customer,
    start: int,
    stop: int,
    now: datetime,
    tally: _Tally,
    dry_run: bool,
    dedupe: sa.Table | None,
) -> set[int]:
    """Jobs ``start < id <= stop``: erase the customer's, cut mentions out of the others'.
    Returns the customer's job ids."""
    texts = [jobs.c.payload, jobs.c.last_error, jobs.c.dedupe_key]
    candidate = sa.or_(
        _any_contains([jobs.c.payload], customer.body_patterns()),
        _any_contains(texts, customer.needles()),
        *([jobs.c.customer_email == customer.value] if customer.kind == "email" else []),
        # A hash: every job with an email is a candidate (its address is hashed to compare).
        *(
            [jobs.c.customer_email.is_not(None)]
            if customer.kind in ("email_md5", "email_sha256")
            else []
        ),
    )
    query = sa.select(
        jobs.c.id,
        jobs.c.queue,
        jobs.c.status,
        jobs.c.payload,
        jobs.c.last_error,
        jobs.c.dedupe_key,
        jobs.c.customer_email,
    ).where(jobs.c.id > start, jobs.c.id <= stop, candidate)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()  # a claim skips them; a recording worker waits
    owned: set[int] = set()
    erased: list[outbox.Erasure] = []
    for row in conn.execute(query).all():
        changes: dict[str, Any] = {}
        cancel = False
        key_dropped = (
            row.dedupe_key is not None and customer.scrub(row.dedupe_key) != row.dedupe_key
        )
        if customer.owns(row.payload) or customer.owns_email(row.customer_email):
            owned.add(row.id)
            tally.jobs += 1
            changes = {"payload": ERASED_PAYLOAD, "customer_email": None}
            if row.last_error is not None:
                changes["last_error"] = ERASED
            if row.status in WAITING_STATUSES:
                cancel = True
                tally.cancelled += 1
            elif row.status == JobStatus.IN_FLIGHT:
                tally.in_flight += 1
        else:
            for name in ("payload", "last_error"):
                scrubbed = customer.scrub(getattr(row, name))
                if scrubbed != getattr(row, name):
                    changes[name] = scrubbed
            if changes or key_dropped:
                tally.mentions += 1
        if key_dropped:
            changes["dedupe_key"] = None
            if dedupe is not None and not dry_run:
                conn.execute(sa.delete(dedupe).where(dedupe.c.job_id == row.id))
        if changes and not dry_run:
            erased.append(outbox.Erasure(row.id, changes, cancel=cancel))
    if not dry_run:
        outbox.erase_jobs(conn, erased, now)
    return owned


def _erase_attempts(conn: sa.Connection, ids: list[int], tally: _Tally, dry_run: bool) -> None:
    """Every attempt of the jobs ``ids``: error and response body become :data:`ERASED`."""
    texts = sa.or_(attempts.c.error.is_not(None), attempts.c.response_body.is_not(None))
    chosen = (attempts.c.job_id.in_(ids), texts)
    if dry_run:
        tally.attempts += int(
            conn.execute(
                sa.select(sa.func.count()).select_from(attempts).where(*chosen)
            ).scalar_one()
        )
        return
    tally.attempts += conn.execute(
        sa.update(attempts)
        .where(*chosen)
        .values(
            error=sa.case((attempts.c.error.is_(None), None), else_=ERASED),
            response_body=sa.case((attempts.c.response_body.is_(None), None), else_=ERASED),
        )
    ).rowcount


def _attempts_batch(
    conn: sa.Connection,
    customer: Customer,
    owned: set[int],
    start: int,
    stop: int,
    tally: _Tally,
    dry_run: bool,
) -> None:
    """Attempts ``start < id <= stop`` of other jobs than the customer's: mentions cut out."""
    texts = [attempts.c.error, attempts.c.response_body]
    rows = conn.execute(
        sa.select(
            attempts.c.id, attempts.c.job_id, attempts.c.error, attempts.c.response_body
        ).where(
            attempts.c.id > start,
            attempts.c.id <= stop,
            _any_contains(texts, customer.needles()),
        )
    ).all()
    for row in rows:
        if row.job_id in owned:  # erased already (or counted, in a dry run)
            continue
        changes = {
            name: customer.scrub(getattr(row, name))
            for name in ("error", "response_body")
            if customer.scrub(getattr(row, name)) != getattr(row, name)
        }
        if not changes:
            continue
        tally.attempts += 1
        if not dry_run:
            conn.execute(sa.update(attempts).where(attempts.c.id == row.id).values(**changes))


def _queue_reasons(conn: sa.Connection, customer: Customer, tally: _Tally, dry_run: bool) -> None:
    """The queues' pause and circuit reasons (an API's answer) lose any mention."""
    texts = [queues.c.pause_reason, queues.c.circuit_reason]
    for row in conn.execute(
        sa.select(queues.c.name, *texts).where(_any_contains(texts, customer.needles()))
    ).all():
        changes = {
            name: customer.scrub(getattr(row, name))
            for name in ("pause_reason", "circuit_reason")
            if customer.scrub(getattr(row, name)) != getattr(row, name)
        }
        if changes:
            tally.mentions += 1
            if not dry_run:
                conn.execute(sa.update(queues).where(queues.c.name == row.name).values(**changes))
