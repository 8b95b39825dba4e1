"""The policy module: its rules tested once, fast; each SQL and Lua form proved equal to its Python form."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import polyqueue
from polyqueue import json_codec, policy
from polyqueue.backends import postgresql
from polyqueue.backends.sql import SQLBackend
from polyqueue.job import STATUSES, Job, JobStatus


def _job(**fields: Any) -> Job:
    base: dict[str, Any] = dict(
        id=7, queue="q", job_type="t", payload=None, priority=0, status="processing", attempts=1,
        max_attempts=3, run_at=datetime.now(UTC), created_at=datetime.now(UTC), locked_by="w-1",
    )  # fmt: skip
    return Job(**{**base, **fields})


# --- the rules, in Python ---------------------------------------------------------------------------
def test_backoff_is_exponential_capped_and_jittered_as_asked() -> None:
    rng = random.Random(1)
    equal = policy.Backoff(1.0, 100.0)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (7, 64), (8, 100), (10_000, 100)]:
        values = [equal.delay(attempt, rng) for _ in range(50)]
        assert all(ceiling / 2 <= v <= ceiling for v in values) and len(set(values)) > 1
    assert policy.Backoff(0.1, 5.0, policy.Jitter.NONE).delay(3) == pytest.approx(0.4)
    full = [policy.Backoff(1.0, 8.0, policy.Jitter.FULL).delay(4, rng) for _ in range(200)]
    assert min(full) < 4 and all(0 <= v <= 8 for v in full)


def test_a_failure_retries_until_the_final_attempt_then_dies() -> None:
    backoff = policy.Backoff(2.0, 60.0)
    retry = policy.failed(_job(attempts=1), "boom", backoff=backoff)
    assert retry.status == JobStatus.PENDING and 1.0 <= (retry.run_in or 0) <= 2.0 and not retry.finished
    assert policy.failed(_job(attempts=1), "boom", backoff=backoff, retry_in=0.0).run_in == 0.0
    final = policy.failed(_job(attempts=3), "boom", backoff=backoff, retry_in=5.0)
    assert (final.status, final.finished, final.run_in) == (JobStatus.DEAD, True, None)
    forced = policy.failed(_job(attempts=1), "boom", backoff=backoff, dead=True)
    assert forced.status == JobStatus.DEAD


def test_a_failure_appends_to_a_bounded_error_history() -> None:
    history = [{"attempt": n, "error": f"e{n}", "worker": "w"} for n in range(25)]
    settled = policy.failed(_job(attempts=2, errors=history), "latest", backoff=policy.Backoff(1, 1))
    kept = json_codec.loads(settled.errors_json or "[]")
    assert len(kept) == policy.ERROR_HISTORY_LIMIT
    assert kept[-1] == {"attempt": 2, "error": "latest", "worker": "w-1"}
    assert settled.last_error == "latest"


def test_completed_and_released_write_what_they_say() -> None:
    done = policy.completed(_job(), '{"ok":1}')
    assert (done.status, done.finished, done.result_json) == (JobStatus.DONE, True, '{"ok":1}')
    back = policy.released(_job())
    assert (back.status, back.refund_attempt, back.run_in, back.finished) == (JobStatus.PENDING, True, 0.0, False)


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("plain", "plain"),
        (None, "failed"),
        (ValueError("bad \ud800 value"), "ValueError: bad \\ud800 value"),
        ("nul \x00 here", "nul \\x00 here"),
        (_Unprintable(), "_Unprintable: <unprintable error>"),
    ],
)
def test_error_text_is_always_storable(error: Any, expected: str) -> None:
    text = policy.error_text(error)
    assert text == expected
    text.encode("utf-8")


def test_error_text_is_bounded_and_may_carry_the_traceback() -> None:
    assert len(policy.error_text("x" * 100_000)) == policy.MAX_ERROR_LENGTH
    try:
        raise KeyError("missing")
    except KeyError as exc:
        text = policy.error_text(exc, with_traceback=True)
    assert text.startswith("KeyError: 'missing'") and "Traceback" in text and "test_policy.py" in text


def test_the_fence_needs_status_token_and_an_unexpired_lease() -> None:
    now = datetime.now(UTC)
    later, earlier = now + timedelta(seconds=1), now - timedelta(seconds=1)
    assert policy.holds_claim("processing", 5, later, 5, now)
    assert not policy.holds_claim("processing", 5, later, 6, now)
    assert not policy.holds_claim("processing", 5, earlier, 5, now)
    assert not policy.holds_claim("processing", 5, now, 5, now)
    assert not policy.holds_claim("pending", 5, later, 5, now)
    assert not policy.holds_claim("processing", 5, None, 5, now)


def test_tokens_are_positive_62_bit_and_distinct() -> None:
    tokens = {policy.new_token() for _ in range(1000)}
    assert len(tokens) == 1000 and all(0 < t < 2**62 + 2 for t in tokens)


def test_done_and_dead_keep_the_dedupe_key_held_and_nothing_else_does() -> None:
    job = _job(dedupe_key="k", dedupe_for=60.0, attempts=3)
    assert [s for s in (*policy.DEDUPE_HELD_AFTER, "pending", "cancelled") if policy.keeps_dedupe_key(s)] == [
        "done", "dead",
    ]  # fmt: skip
    assert policy.completed(job).hold_dedupe
    assert policy.failed(job, "x", backoff=policy.OUTAGE).hold_dedupe  # the final attempt: dead
    assert not policy.failed(_job(attempts=1), "x", backoff=policy.OUTAGE).hold_dedupe  # a retry: still live
    assert not policy.released(job).hold_dedupe


class FakeClock:
    """A clock that only moves when slept on (or told to)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_pace_sends_steps_on_a_fixed_timetable() -> None:
    clock = FakeClock()
    pace = policy.Pace(50.0)
    assert pace.step == 5  # 50/s in steps of a tenth of a second
    sent: list[tuple[float, int]] = []
    for step in pace.batches(range(23), clock=clock, sleep=clock.sleep):
        sent.append((round(clock.now - 100.0, 6), len(step)))
    assert sent == [(0.0, 5), (0.1, 5), (0.2, 5), (0.3, 5), (0.4, 3)]
    assert policy.Pace(3.0).step == 1 and policy.Pace(0.5).step == 1


def test_a_pace_that_fell_behind_makes_up_one_step_and_never_bursts() -> None:
    clock = FakeClock()
    times: list[float] = []
    for n, _ in enumerate(policy.Pace(10.0).batches(range(10), clock=clock, sleep=clock.sleep)):
        times.append(round(clock.now - 100.0, 6))
        if n == 2:
            clock.now += 5.0  # a step that took five seconds (a slow database)
    assert times[:3] == [0.0, 0.1, 0.2]
    assert times[3:5] == [5.2, 5.2], "after the stall one step is made up at once"
    assert times[5:] == [5.3, 5.4, 5.5, 5.6, 5.7], "then the pace resumes; the lost five seconds are not rushed"


def test_a_purge_rests_after_each_batch_as_long_as_it_took_and_at_least_the_floor() -> None:
    clock = FakeClock()
    pace = policy.PurgePace(1000, rest_floor=0.03, pause=clock.sleep, clock=clock)
    took = [0.001, 0.004, 0.05, 2.0, 0.005]
    sizes: list[int] = []
    for n, size in enumerate(pace.sizes()):
        sizes.append(size)
        if n == len(took):
            break  # the store had nothing left: no rest after the last batch
        clock.now += took[n]
    assert clock.slept == pytest.approx([0.03, 0.03, 0.05, policy.PURGE_REST_CAP, 0.03])
    assert sizes[0] == policy.PURGE_FIRST_BATCH
    assert sizes[1:3] == [200, 400], "a fast batch at most doubles the next"
    assert sizes[3] == max(100, int(400 * policy.PURGE_BATCH_SECONDS / 0.05)), "a slow one shrinks it"
    assert sizes[4] == 100, "never below the first batch: its round trips cost the same"
    assert sizes[5] == 200


def test_a_purge_batch_never_exceeds_the_callers_batch_size() -> None:
    clock = FakeClock()
    sizes = policy.PurgePace(150, pause=clock.sleep, clock=clock).sizes()
    assert [next(sizes) for _ in range(4)] == [100, 150, 150, 150]  # batches that took no time at all
    assert clock.slept == [0.0, 0.0, 0.0]
    assert next(policy.PurgePace(7).sizes()) == 7


def test_rates_are_parsed_and_checked() -> None:
    from polyqueue.errors import InvalidArgument
    from polyqueue.validation import parse_rate

    assert [parse_rate(r) for r in ("50/s", "50", " 3000 / m ", "7200/hour", "2.5/sec", 4)] == [
        50.0, 50.0, 50.0, 2.0, 2.5, 4.0,
    ]  # fmt: skip
    for bad in ("0/s", "-1", "fast", "50/d", float("nan"), float("inf"), True, None, "1e9"):
        with pytest.raises(InvalidArgument):
            parse_rate(bad)  # type: ignore[arg-type]


# --- each SQL form agrees with its Python form, on every SQL backend ----------------------------------
@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def sql_queue(request: pytest.FixtureRequest, sqlite_url: str, fresh_queue: Any) -> polyqueue.Queue:
    if request.param == "sqlite":
        return fresh_queue(sqlite_url)  # type: ignore[no-any-return]
    return fresh_queue(request.getfixturevalue({"postgresql": "pg_url", "mysql": "mysql_url"}[request.param]))  # type: ignore[no-any-return]


def _backend(q: polyqueue.Queue) -> SQLBackend:
    assert isinstance(q.backend, SQLBackend)
    return q.backend


def _evaluate(q: polyqueue.Queue, expression: sa.ColumnElement[Any]) -> Any:
    with _backend(q).engine.connect() as conn:
        return conn.execute(sa.select(expression)).scalar_one()


def test_the_final_attempt_and_expiry_rules_agree(sql_queue: polyqueue.Queue) -> None:
    for attempts, max_attempts in itertools.product(range(0, 7), range(1, 6)):
        a, m = sa.literal(attempts, sa.Integer()), sa.literal(max_attempts, sa.Integer())
        final = bool(_evaluate(sql_queue, sa.case((policy.final_attempt_sql(a, m), 1), else_=0)))
        assert final == policy.is_final_attempt(attempts, max_attempts), (attempts, max_attempts)
        status = _evaluate(sql_queue, policy.expired_lease_status_sql(a, m))
        assert status == policy.expired_lease_status(attempts, max_attempts), (attempts, max_attempts)


def test_the_cancel_rules_agree(sql_queue: polyqueue.Queue) -> None:
    """A cancel requested while a job ran: its expired lease and its settlement back to pending end it cancelled."""
    for attempts, max_attempts, flag in itertools.product(range(0, 4), range(1, 4), (False, True)):
        a, m = sa.literal(attempts, sa.Integer()), sa.literal(max_attempts, sa.Integer())
        status = _evaluate(sql_queue, policy.expired_lease_status_sql(a, m, sa.literal(flag, sa.Boolean())))
        assert status == policy.expired_lease_status(attempts, max_attempts, flag), (attempts, max_attempts, flag)
    for status, flag in itertools.product(("pending", "done", "dead", "cancelled"), (False, True)):
        settled = policy.settled_status_sql(status, sa.literal(flag, sa.Boolean()))
        written = _evaluate(sql_queue, settled) if not isinstance(settled, str) else settled
        assert written == policy.settled_status(status, flag), (status, flag)


def test_the_attempt_cap_agrees(sql_queue: polyqueue.Queue) -> None:
    for stored, cap in itertools.product(range(1, 7), range(1, 7)):
        expression = policy.capped_max_attempts_sql(sa.literal(stored, sa.Integer()), sa.literal(cap, sa.Integer()))
        assert _evaluate(sql_queue, expression) == policy.capped_max_attempts(stored, cap)


@pytest.mark.parametrize("worker", ["w-1", None, "host:12:ab", "it's 😀"])
def test_the_expiry_error_agrees(sql_queue: polyqueue.Queue, worker: str | None) -> None:
    held_by = sa.literal(worker, sa.String()) if worker is not None else sa.null()
    assert _evaluate(sql_queue, policy.expired_lease_error_sql(held_by)) == policy.expired_lease_error(worker)


def test_the_dedupe_hold_agrees(sql_queue: polyqueue.Queue) -> None:
    for status in STATUSES:
        held = _evaluate(sql_queue, policy.dedupe_hold_sql(sa.literal(status, sa.String()), sa.literal(1)))
        assert (held == 1) == policy.keeps_dedupe_key(status), status


def test_the_fence_agrees(sql_queue: polyqueue.Queue) -> None:
    backend = _backend(sql_queue)
    now = backend.db_now()
    moments = {"expired": now - timedelta(seconds=30), "held": now + timedelta(seconds=30), "none": None}
    for status, token_matches, moment in itertools.product(("processing", "pending", "done"), (True, False), moments):
        expires = moments[moment]
        expression = policy.holds_claim_sql(
            sa.literal(status, sa.String()),
            sa.literal(expires, backend.time_type()) if expires is not None else sa.null(),
            backend.now(),
            sa.literal(1, sa.Integer()) == (1 if token_matches else 2),
        )
        in_sql = bool(_evaluate(sql_queue, sa.case((expression, 1), else_=0)))
        in_python = policy.holds_claim(status, 1, expires, 1 if token_matches else 2, now)
        assert in_sql == in_python, (status, token_matches, moment)


def test_claim_order_agrees(sql_queue: polyqueue.Queue) -> None:
    backend = _backend(sql_queue)
    base = backend.db_now() - timedelta(hours=1)
    rng = random.Random(3)
    moments = [base + timedelta(seconds=n) for n in range(4)]
    priorities = [-5, 0, 0, 3, 9]
    specs = [{"job_type": "t", "priority": rng.choice(priorities), "run_at": rng.choice(moments)} for _ in range(60)]
    sql_queue.enqueue_many(specs)
    jobs = backend.jobs
    with backend.engine.connect() as conn:
        in_sql = [r[0] for r in conn.execute(sa.select(jobs.c.id).order_by(*policy.claim_order_sql(jobs.c)))]
    stored = [sql_queue.get(i) for i in in_sql]
    in_python = [job.id for job in sorted(stored, key=policy.job_claim_key)]  # type: ignore[arg-type]
    assert in_sql == in_python
    assert [j.id for j in sql_queue.claim(limit=60)] == in_python


def test_the_postgresql_claim_renders_the_same_rules(pg_url: str) -> None:
    """The one-statement claim splices the policy's expressions in as text: evaluate that text against Python."""
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            for attempts, max_attempts, flag in itertools.product(range(0, 5), range(1, 4), (False, True)):
                row = conn.execute(
                    sa.text(
                        f"SELECT {postgresql._EXPIRED_STATUS}, {postgresql._FINAL}, "
                        f"{postgresql._CAPPED.replace('CAST(:cap AS integer)', ':cap')}, "
                        f"{postgresql._CLAIMABLE_EXPIRED} "
                        "FROM (SELECT CAST(:a AS int) AS attempts, CAST(:m AS int) AS max_attempts, "
                        "CAST(:who AS text) AS locked_by, CAST(:c AS boolean) AS cancel_requested) AS j"
                    ),
                    {"a": attempts, "m": max_attempts, "cap": 2, "who": "w", "c": flag},
                ).one()
                status = policy.expired_lease_status(attempts, max_attempts, flag)
                assert row[0] == status
                # The expired job's row is finished (finished_at written) exactly when it does not go back to pending.
                assert row[1] == (status != "pending")
                assert row[2] == policy.capped_max_attempts(max_attempts, 2)
                assert row[3] == (status == "pending")
            order = conn.execute(
                sa.text(
                    "SELECT id FROM (VALUES (1, 0, 10), (2, 5, 30), (3, 5, 20), (4, 0, 5), (5, 5, 20)) "
                    f"AS v(id, priority, run_at) ORDER BY {postgresql._CLAIM_ORDER}"
                )
            ).scalars()
            rows = {1: (0, 10), 2: (5, 30), 3: (5, 20), 4: (0, 5), 5: (5, 20)}
            expected = sorted(rows, key=lambda i: policy.claim_order_key(rows[i][0], rows[i][1], i))
            assert list(order) == expected
    finally:
        engine.dispose()


# --- each Lua form agrees with its Python form, evaluated by a real Redis's Lua ------------------------
@pytest.fixture
def lua(redis_url: str) -> Iterator[Callable[..., Any]]:
    """``lua(source, *args)``: run a Lua chunk on the test Redis (no keys), returning its reply."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield lambda source, *args: client.eval(source, 0, *args)
    client.close()


def test_the_final_attempt_and_expiry_rules_agree_in_lua(lua: Callable[..., Any]) -> None:
    source = (
        "local a, m = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
        f"return {{{policy.final_attempt_lua('a', 'm')} and 1 or 0, {policy.expired_lease_status_lua('a', 'm')}}}"
    )
    for attempts, max_attempts in itertools.product(range(0, 7), range(1, 6)):
        final, status = lua(source, attempts, max_attempts)
        assert bool(final) == policy.is_final_attempt(attempts, max_attempts), (attempts, max_attempts)
        assert status == policy.expired_lease_status(attempts, max_attempts), (attempts, max_attempts)


def test_the_attempt_cap_agrees_in_lua(lua: Callable[..., Any]) -> None:
    source = f"local s, c = tonumber(ARGV[1]), tonumber(ARGV[2])\nreturn {policy.capped_max_attempts_lua('s', 'c')}"
    for stored, cap in itertools.product(range(1, 7), [*range(1, 7), None]):
        assert lua(source, stored, "" if cap is None else cap) == policy.capped_max_attempts(stored, cap)


@pytest.mark.parametrize("worker", ["w-1", None, "", "host:12:ab", 'it\'s 😀 "quoted" \\ back'])
def test_the_expiry_error_agrees_in_lua(lua: Callable[..., Any], worker: str | None) -> None:
    # A holder the store does not have arrives as Lua false (what HGET gives for a missing field).
    source = f"local held = ARGV[1] == '1' and ARGV[2] or false\nreturn {policy.expired_lease_error_lua('held')}"
    present = "0" if worker is None else "1"
    assert lua(source, present, worker or "") == policy.expired_lease_error(worker)


def test_the_fence_agrees_in_lua(lua: Callable[..., Any]) -> None:
    source = (
        "local le = tonumber(ARGV[3])\n"
        f"if {policy.holds_claim_lua('ARGV[1]', 'ARGV[2]', 'le', 'ARGV[4]', 'tonumber(ARGV[5])')} "
        "then return 1 else return 0 end"
    )
    now = 1_790_000_000_000_000  # microseconds, as the Redis plugin keeps times
    token = policy.new_token()
    moments = {"expired": now - 1, "now": now, "held": now + 1, "none": None}
    for status, stored, moment in itertools.product(("processing", "pending", "done"), (token, token + 1), moments):
        expires = moments[moment]
        in_lua = bool(lua(source, status, str(stored), "" if expires is None else expires, str(token), now))
        assert in_lua == policy.holds_claim(status, stored, expires, token, now), (status, stored == token, moment)


def test_claim_order_agrees_in_lua(lua: Callable[..., Any]) -> None:
    rng = random.Random(5)
    rows = [(rng.choice([-5, 0, 0, 3, 9]), rng.randrange(4) * 1_000_000 + 1_790_000_000_000_000, i) for i in range(80)]
    rng.shuffle(rows)
    a = {"priority": "a[1]", "run_at": "a[2]", "id": "a[3]"}
    b = {"priority": "b[1]", "run_at": "b[2]", "id": "b[3]"}
    source = (
        "local rows = {}\n"
        "for i = 1, #ARGV, 3 do\n"
        "  rows[#rows + 1] = {tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])}\n"
        "end\n"
        f"table.sort(rows, function(a, b) return {policy.claim_order_lua(a, b)} end)\n"
        "local ids = {}\n"
        "for i, row in ipairs(rows) do ids[i] = row[3] end\n"
        "return ids"
    )
    in_lua = lua(source, *(value for row in rows for value in row))
    assert in_lua == [row[2] for row in sorted(rows, key=lambda row: policy.claim_order_key(*row))]


def test_lua_literals_carry_any_text(lua: Callable[..., Any]) -> None:
    for text in ["", "plain", 'it\'s "q" \\ \n\t', "é 😀 日本語", "]] [[ --", "\x01\x7f"]:
        assert lua(f"return {policy.lua_literal(text)}") == text


# --- claim sizing ------------------------------------------------------------------------------------
def test_claim_size_is_concurrency_until_a_handler_has_finished() -> None:
    sizer = policy.ClaimSizer(8)
    sizer.claimed(8, 8)
    assert sizer.capacity == 8


def test_claim_size_doubles_only_as_a_full_claims_jobs_finish() -> None:
    sizer = policy.ClaimSizer(8)
    sizer.claimed(8, 8)
    for _ in range(7):
        sizer.finished(0.0001)
    assert sizer.capacity == 8, "the ramp grew before the claim's jobs had finished"
    sizer.finished(0.0001)
    assert sizer.capacity == 16
    sizes = []
    for _ in range(6):
        asked = sizer.capacity
        sizer.claimed(asked, asked)
        for _ in range(asked):
            sizer.finished(0.0001)
        sizes.append(sizer.capacity)
    assert sizes == [32, 64, 128, 200, 200, 200]


def test_claim_size_falls_back_when_a_claim_comes_back_short() -> None:
    sizer = policy.ClaimSizer(8)
    sizer.mean_duration, sizer.ramp = 0.0001, 200
    sizer.claimed(100, 30)
    assert sizer.capacity == 60
    sizer.claimed(60, 0)
    assert sizer.capacity == 8
    for _ in range(50):
        sizer.finished(0.0001)  # completions of earlier claims earn nothing after a short one
    assert sizer.capacity == 8


def test_claim_size_holds_only_a_horizon_of_slow_jobs() -> None:
    sizer = policy.ClaimSizer(8)
    sizer.ramp = 200
    sizer.finished(0.5)
    assert sizer.capacity == 8
    sizer.mean_duration = 0.01  # 8 slots run 800 jobs/s: 0.1 s of them is 80
    assert sizer.capacity == int(8 * policy.CLAIM_HORIZON / 0.01)
    assert policy.ClaimSizer(300).capacity == 300, "never fewer than the worker can run"


# --- error history entries: one shape, one time format, on every store ------------------------------
def test_an_entry_time_is_iso_8601_utc_to_the_millisecond() -> None:
    assert policy.error_time(0) == "1970-01-01T00:00:00.000Z"
    moment = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
    assert policy.error_time((moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)) == (
        "2024-02-29T23:59:59.999Z"
    )
    assert len(policy.ERROR_TIME_FORMAT) == len(policy.error_time(0))


def test_a_failure_entry_is_stamped_and_an_expiry_entry_appended_within_the_limit() -> None:
    history = json_codec.dumps([{"attempt": n, "error": f"e{n}", "worker": "w"} for n in range(20)])
    stamped = json_codec.loads(policy.stamp_newest_entry(history, "2026-01-02T03:04:05.678Z"))
    assert stamped[-1] == {"attempt": 19, "error": "e19", "worker": "w", "at": "2026-01-02T03:04:05.678Z"}
    assert stamped[:-1] == json_codec.loads(history)[:-1]
    entry = policy.expired_lease_entry(4, None, "2026-01-02T03:04:05.678Z")
    assert entry == {"attempt": 4, "error": "lease expired while held by ?", "worker": None, "at": entry["at"]}
    appended = json_codec.loads(policy.appended_entry(history, entry))
    assert len(appended) == policy.ERROR_HISTORY_LIMIT and appended[0]["attempt"] == 1 and appended[-1] == entry
    assert json_codec.loads(policy.appended_entry(None, entry)) == [entry]


_HISTORIES = [None, "[]", json_codec.dumps([{"attempt": n, "error": f"e{n} 😀", "worker": None} for n in range(20)])]


@pytest.mark.parametrize("history", _HISTORIES, ids=["null", "empty", "full"])
@pytest.mark.parametrize("worker", ["w-1", None, 'it\'s 😀 "quoted"'])
def test_the_expiry_entry_is_appended_alike(
    sql_queue: polyqueue.Queue, history: str | None, worker: str | None
) -> None:
    backend = _backend(sql_queue)
    held_by = sa.literal(worker, sa.String()) if worker is not None else sa.null()
    at = "2026-01-02T03:04:05.678Z"
    entry = policy.expired_lease_entry_sql(sa.literal(3, sa.Integer()), held_by, sa.literal(at, sa.String()))
    stored = sa.literal(history, sa.Text()) if history is not None else sa.null()
    written = _evaluate(sql_queue, backend.history_appended(stored, entry))
    assert json_codec.loads(written) == json_codec.loads(
        policy.appended_entry(history, policy.expired_lease_entry(3, worker, at))
    )


def test_a_failure_entry_is_stamped_alike_with_the_database_clock(sql_queue: polyqueue.Queue) -> None:
    backend = _backend(sql_queue)
    history = policy.failed(_job(attempts=2, errors=[{"attempt": 1, "error": "old", "worker": "w"}]), "new 😀",
                            backoff=policy.Backoff(1, 1)).errors_json or ""  # fmt: skip
    now_text = _evaluate(sql_queue, backend.now_text())
    db_now = backend.db_now()
    assert abs(datetime.fromisoformat(now_text.replace("Z", "+00:00")) - db_now) < timedelta(seconds=5)
    written = _evaluate(sql_queue, backend.history_stamped(sa.literal(history, sa.Text()), backend.now_text()))
    assert json_codec.loads(written) == json_codec.loads(
        policy.stamp_newest_entry(history, json_codec.loads(written)[-1]["at"])
    )
    assert len(policy.error_time(0)) == len(json_codec.loads(written)[-1]["at"])


def test_the_postgresql_claim_appends_the_same_expiry_entry(pg_url: str) -> None:
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            for history in _HISTORIES:
                written, at = conn.execute(
                    sa.text(
                        f"SELECT {postgresql._EXPIRED_ERRORS}, {postgresql._sql(postgresql._ENTRY_TIME)} "
                        "FROM (SELECT CAST(:h AS text) AS errors, 3 AS attempts, CAST(:who AS text) AS locked_by) AS j"
                    ),
                    {"h": history, "who": "w-9"},
                ).one()
                expected = policy.appended_entry(history, policy.expired_lease_entry(3, "w-9", at))
                assert json_codec.loads(written) == json_codec.loads(expected)
    finally:
        engine.dispose()


@pytest.mark.parametrize("worker", ["w-1", None, 'it\'s 😀 "quoted" \\ back'])
def test_the_expiry_entry_agrees_in_lua(lua: Callable[..., Any], worker: str | None) -> None:
    source = (
        "local held = ARGV[1] == '1' and ARGV[2] or false\nlocal a = tonumber(ARGV[3])\n"
        f"return cjson.encode({policy.expired_lease_entry_lua('a', 'held', 'ARGV[4]')})"
    )
    at = "2026-01-02T03:04:05.678Z"
    written = lua(source, "0" if worker is None else "1", worker or "", 3, at)
    assert json_codec.loads(written) == policy.expired_lease_entry(3, worker, at)


# --- flow control -------------------------------------------------------------------------------------
def test_the_rate_allowance_earns_by_the_clock_and_saves_at_most_a_second() -> None:
    assert policy.rate_allowance(0.0, 0.5, 10.0) == pytest.approx(5.0)
    assert policy.rate_allowance(2.0, 0.1, 10.0) == pytest.approx(3.0)
    assert policy.rate_allowance(0.0, 60.0, 10.0) == pytest.approx(10.0 * policy.RATE_BURST_SECONDS)
    assert policy.rate_allowance(0.0, 60.0, 0.1) == pytest.approx(1.0), "a slow rate may still start one job"
    assert policy.rate_allowance(0.5, -3.0, 10.0) == pytest.approx(0.5), "clocks read out of order earn nothing"


def test_a_claim_takes_what_every_limit_allows() -> None:
    none = polyqueue.QueueLimits()
    assert policy.claim_allowance(10, none, 99, None) == 10
    assert policy.claim_allowance(10, polyqueue.QueueLimits(concurrency=3), 1, None) == 2
    assert policy.claim_allowance(10, polyqueue.QueueLimits(concurrency=3), 5, None) == 0, "never negative"
    assert policy.claim_allowance(10, polyqueue.QueueLimits(rate=5.0), 0, 2.999) == 2, "whole starts only"
    assert policy.claim_allowance(10, polyqueue.QueueLimits(rate=5.0), 0, 2.9999999999) == 3, "not float noise"
    assert policy.claim_allowance(4, polyqueue.QueueLimits(concurrency=8, rate=5.0), 2, 9.0) == 4


def test_fair_order_puts_the_key_with_less_running_first() -> None:
    assert policy.key_slot(1, 0) == 1 and policy.key_slot(2, 3) == 5
    assert policy.key_has_room(2, 2) and not policy.key_has_room(3, 2)
    old, new = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    hot = policy.fair_order_key(policy.key_slot(1, 4), 0, old, 1)  # older, but its key already runs 4
    cold = policy.fair_order_key(policy.key_slot(1, 0), 0, new, 99)
    assert cold < hot
    assert policy.fair_order_key(1, 5, new, 2) < policy.fair_order_key(1, 0, old, 1), "then claim order"


def test_the_flow_control_sql_agrees_with_python(pg_url: str, fresh_queue: Any) -> None:
    q = fresh_queue(pg_url)

    def number(value: float | None) -> sa.ColumnElement[Any]:
        return sa.literal(value, sa.Float()) if value is not None else sa.null()

    for saved, elapsed, rate in itertools.product((0.0, 0.4, 7.0), (-1.0, 0.0, 0.25, 90.0), (None, 0.5, 20.0)):
        got = _evaluate(q, policy.rate_allowance_sql(number(saved), number(elapsed), number(rate)))
        want = None if rate is None else policy.rate_allowance(saved, elapsed, rate)
        assert got == pytest.approx(want), (saved, elapsed, rate)
    for limit, concurrency, processing, allowance in itertools.product(
        (1, 10), (None, 3, 12), (0, 2, 5), (None, 0.0, 2.5, 2.9999999999, 40.0)
    ):
        limits = polyqueue.QueueLimits(concurrency=concurrency, rate=None if allowance is None else 1.0)
        want = policy.claim_allowance(limit, limits, processing, allowance)
        c = sa.literal(concurrency, sa.Integer()) if concurrency is not None else sa.null()
        sql = policy.claim_allowance_sql(limit, c, sa.literal(processing, sa.Integer()), number(allowance))
        assert _evaluate(q, sql) == want, (limit, concurrency, processing, allowance)
