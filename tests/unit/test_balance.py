"""The balancing algorithms on their own: given candidates (and a key), which server is picked."""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.config.model import Address, ServerConfig
from proxyd.pool.balance import (
    ALGORITHMS,
    HASH_POINTS_PER_WEIGHT,
    Balancer,
    ConsistentHash,
    First,
    LeastConn,
    RandomTwo,
    RoundRobin,
    make_balancer,
)
from proxyd.pool.server import Server

PICKS = 10_000


def servers(*weights: int) -> tuple[Server, ...]:
    return tuple(
        Server(config=ServerConfig(Address(f"192.0.2.{i}", 80), weight=w), pool="p")
        for i, w in enumerate(weights, 1)
    )


def letters(picked: Sequence[Server | None], pool: Sequence[Server]) -> str:
    return "".join("abcdefgh"[pool.index(s)] if s is not None else "-" for s in picked)


def shares(counts: Counter[Server], pool: Sequence[Server]) -> list[float]:
    total = sum(counts.values())
    return [counts[s] / total for s in pool]


def expected_shares(pool: Sequence[Server]) -> list[float]:
    total = sum(s.weight for s in pool)
    return [s.weight / total for s in pool]


def assert_shares_close(counts: Counter[Server], pool: Sequence[Server], tolerance: float) -> None:
    assert shares(counts, pool) == pytest.approx(expected_shares(pool), abs=tolerance)


def keys(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(4) for _ in range(n)]


def pick(balancer: Balancer, candidates: Sequence[Server], key: bytes | None = None) -> Server:
    server = balancer.pick(candidates, key)
    assert server is not None
    return server


def run_with_load(
    balancer: Balancer, pool: Sequence[Server], concurrency: int, rng: random.Random | None = None
) -> Counter[Server]:
    """PICKS connections, each held while `concurrency` others open after it (FIFO), or, with
    `rng`, closing a random open one once `concurrency` are open (random lifetimes)."""
    open_: deque[Server] = deque()
    counts: Counter[Server] = Counter()
    for _ in range(PICKS):
        server = pick(balancer, pool)
        server.active += 1
        counts[server] += 1
        open_.append(server)
        if len(open_) > concurrency:
            if rng is None:
                done = open_.popleft()
            else:
                done = open_[rng.randrange(len(open_))]
                open_.remove(done)
            done.active -= 1
    return counts


# round_robin


def test_round_robin_weights_5_1_1_give_the_nginx_smooth_sequence() -> None:
    pool = servers(5, 1, 1)
    balancer = RoundRobin()
    assert letters([balancer.pick(pool, None) for _ in range(14)], pool) == "aabacaa" * 2


def test_round_robin_with_equal_weights_cycles_in_config_order() -> None:
    pool = servers(1, 1, 1)
    balancer = RoundRobin()
    assert letters([balancer.pick(pool, None) for _ in range(6)], pool) == "abcabc"


def test_round_robin_honours_weights_over_many_picks() -> None:
    pool = servers(5, 3, 2)
    balancer = RoundRobin()
    counts = Counter(pick(balancer, pool) for _ in range(PICKS))
    assert_shares_close(counts, pool, 0.01)


def test_round_robin_shares_between_the_candidates_of_each_pick() -> None:
    _, b, c = pool = servers(2, 1, 1)
    balancer = RoundRobin()
    without_a = Counter(pick(balancer, (b, c)) for _ in range(1000))
    assert without_a == {b: 500, c: 500}
    counts = Counter(pick(balancer, pool) for _ in range(4000))
    assert_shares_close(counts, pool, 0.01)


def test_round_robin_ignores_the_key() -> None:
    pool = servers(1, 1)
    balancer = RoundRobin()
    assert letters([balancer.pick(pool, b"same") for _ in range(4)], pool) == "abab"


# least_conn


def test_least_conn_picks_the_fewest_connections_per_unit_of_weight() -> None:
    a, b, c = pool = servers(2, 1, 1)
    a.active, b.active, c.active = 3, 2, 4
    # 3/2 < 2/1 < 4/1
    assert LeastConn().pick(pool, None) is a


def test_least_conn_compares_loads_exactly_by_cross_multiplication() -> None:
    a, b = pool = servers(3, 6)
    a.active, b.active = 1, 2  # 1/3 == 2/6 exactly: a tie, shared by weight
    balancer = LeastConn()
    counts = Counter(pick(balancer, pool) for _ in range(9))
    assert counts == {a: 3, b: 6}


def test_least_conn_breaks_ties_by_smooth_weighted_round_robin() -> None:
    pool = servers(5, 1, 1)
    balancer = LeastConn()
    assert letters([balancer.pick(pool, None) for _ in range(7)], pool) == "aabacaa"


def test_least_conn_round_robin_counts_only_the_tied_servers() -> None:
    pool = servers(1, 1, 1)
    pool[2].active = 1
    balancer = LeastConn()
    assert letters([balancer.pick(pool, None) for _ in range(4)], pool) == "abab"


@pytest.mark.parametrize("concurrency", [0, 10, 50])
def test_least_conn_honours_weights_under_steady_load(concurrency: int) -> None:
    pool = servers(5, 3, 2)
    counts = run_with_load(LeastConn(), pool, concurrency)
    assert_shares_close(counts, pool, 0.02)


def test_least_conn_honours_weights_with_random_connection_lifetimes() -> None:
    pool = servers(5, 3, 2)
    counts = run_with_load(LeastConn(), pool, 30, random.Random(4))
    assert_shares_close(counts, pool, 0.02)


# random_two


def test_random_two_picks_the_less_loaded_of_the_two_drawn() -> None:
    a, b = pool = servers(1, 1)
    a.active = 1
    balancer = RandomTwo(random.Random(0))
    assert {pick(balancer, pool) for _ in range(100)} == {b}


def test_random_two_never_draws_the_same_server_twice() -> None:
    # A server drawn twice would win against itself; drawn with another, the busy one loses.
    a, *_ = pool = servers(1, 1, 1)
    a.active = 100
    balancer = RandomTwo(random.Random(0))
    assert a not in {pick(balancer, pool) for _ in range(1000)}


def test_random_two_compares_load_per_unit_of_weight() -> None:
    a, b = pool = servers(4, 1)
    a.active, b.active = 3, 1  # 3/4 < 1/1
    balancer = RandomTwo(random.Random(0))
    assert {pick(balancer, pool) for _ in range(100)} == {a}


def test_random_two_with_one_candidate_picks_it_and_none_without() -> None:
    (a,) = servers(1)
    balancer = RandomTwo(random.Random(0))
    assert balancer.pick([a], None) is a
    assert balancer.pick([], None) is None


@pytest.mark.parametrize("concurrency", [0, 10, 50])
def test_random_two_honours_weights(concurrency: int) -> None:
    pool = servers(5, 3, 2)
    counts = run_with_load(RandomTwo(random.Random(1)), pool, concurrency)
    assert_shares_close(counts, pool, 0.025)


def test_random_two_draws_only_from_the_rng_it_is_given() -> None:
    pool = servers(3, 2, 1, 1)
    one, two = RandomTwo(random.Random(42)), RandomTwo(random.Random(42))
    assert [pick(one, pool) for _ in range(200)] == [pick(two, pool) for _ in range(200)]


# hash


def test_hash_sends_the_same_key_to_the_same_server() -> None:
    pool = servers(1, 1, 1, 1, 1)
    balancer = ConsistentHash(pool)
    for key in keys(100):
        assert len({pick(balancer, pool, key) for _ in range(5)}) == 1


def test_hash_picks_do_not_depend_on_the_instance_or_the_process() -> None:
    # blake2b, not hash(): every worker process, and the next release, agree on the ring.
    pool, twin = servers(1, 1, 1, 1, 1), servers(1, 1, 1, 1, 1)
    one, two = ConsistentHash(pool), ConsistentHash(twin)
    for key in keys(200):
        assert pick(one, pool, key).name == pick(two, twin, key).name
    clients = [bytes([203, 0, 113, n]) for n in range(1, 7)]
    assert letters([one.pick(pool, key) for key in clients], pool) == "edbcdb"


def test_hash_spreads_keys_evenly_over_equal_servers() -> None:
    pool = servers(1, 1, 1, 1, 1)
    balancer = ConsistentHash(pool)
    counts = Counter(pick(balancer, pool, key) for key in keys(PICKS))
    assert_shares_close(counts, pool, 0.04)


def test_hash_spreads_keys_by_weight() -> None:
    pool = servers(3, 1)
    balancer = ConsistentHash(pool)
    assert len(balancer._points) == HASH_POINTS_PER_WEIGHT * 4
    counts = Counter(pick(balancer, pool, key) for key in keys(PICKS))
    assert_shares_close(counts, pool, 0.04)


def test_hash_unavailable_server_moves_only_the_keys_that_were_on_it() -> None:
    pool = servers(1, 1, 1, 1, 1)
    gone = pool[2]
    balancer = ConsistentHash(pool)
    before = {key: pick(balancer, pool, key) for key in keys(PICKS)}
    rest = [s for s in pool if s is not gone]
    after = {key: pick(balancer, rest, key) for key in before}
    moved = {key for key in before if before[key] is not after[key]}
    assert moved == {key for key in before if before[key] is gone}
    # The orphaned keys spread over the others rather than all landing on one neighbour.
    assert len({after[key] for key in moved}) == len(rest)


def test_hash_removing_a_server_from_the_config_moves_about_one_nth_of_the_keys() -> None:
    pool = servers(1, 1, 1, 1, 1)
    balancer = ConsistentHash(pool)
    smaller = tuple(s for s in servers(1, 1, 1, 1, 1) if s.name != pool[3].name)
    rebuilt = ConsistentHash(smaller)
    moved = 0
    for key in keys(PICKS):
        before, after = pick(balancer, pool, key), pick(rebuilt, smaller, key)
        if before.name != after.name:
            assert before is pool[3]
            moved += 1
    assert moved / PICKS <= 1 / len(pool) + 0.03


def test_hash_adding_a_server_moves_about_one_nth_of_the_keys_all_to_it() -> None:
    small, big = servers(1, 1, 1, 1), servers(1, 1, 1, 1, 1)
    one, two = ConsistentHash(small), ConsistentHash(big)
    moved = 0
    for key in keys(PICKS):
        before, after = pick(one, small, key), pick(two, big, key)
        if before.name != after.name:
            assert after is big[4]
            moved += 1
    assert moved / PICKS <= 1 / len(big) + 0.03


def test_hash_without_a_key_falls_back_to_smooth_round_robin() -> None:
    pool = servers(5, 1, 1)
    balancer = ConsistentHash(pool)
    assert letters([balancer.pick(pool, None) for _ in range(7)], pool) == "aabacaa"


def test_hash_with_no_candidates_picks_none() -> None:
    pool = servers(1, 1)
    assert ConsistentHash(pool).pick([], b"key") is None


# first


def test_first_picks_the_first_candidate_in_config_order() -> None:
    a, b, c = servers(1, 5, 1)
    balancer = First()
    assert [balancer.pick(cands, None) for cands in ([a, b, c], [b, c], [c], [])] == [a, b, c, None]


# weights changed at run time


def test_round_robin_and_least_conn_read_each_servers_weight_at_each_pick() -> None:
    for balancer in (RoundRobin(), LeastConn()):
        pool = servers(1, 1, 1)
        assert letters([pick(balancer, pool) for _ in range(3)], pool) == "abc"
        pool[0].weight = 5
        balancer.weights_changed()
        assert letters([pick(balancer, pool) for _ in range(7)], pool) == "aabacaa"


def test_random_two_draws_by_the_weights_of_the_moment() -> None:
    pool = servers(1, 1)
    balancer = RandomTwo(random.Random(4))
    pool[1].weight = 9
    balancer.weights_changed()
    counts = Counter(pick(balancer, pool) for _ in range(PICKS))
    # Idle: each pick is the first of a weighted draw of two.
    assert counts[pool[1]] / PICKS == pytest.approx(0.9, abs=0.02)


def test_hash_ring_follows_a_weight_change_moving_keys_only_to_the_heavier_server() -> None:
    pool = servers(1, 1, 1)
    balancer = ConsistentHash(pool)
    sample = keys(5_000, seed=5)
    before = [pick(balancer, pool, k) for k in sample]
    pool[2].weight = 3
    # Nothing moves until the balancer is told: the ring is built ahead of time.
    assert [pick(balancer, pool, k) for k in sample] == before
    balancer.weights_changed()
    after = [pick(balancer, pool, k) for k in sample]
    assert {a for a, b in zip(after, before, strict=True) if a is not b} == {pool[2]}
    assert Counter(after)[pool[2]] / len(sample) == pytest.approx(3 / 5, abs=0.04)
    assert len(balancer._points) == HASH_POINTS_PER_WEIGHT * 5


def test_first_ignores_weights_changed() -> None:
    pool = servers(1, 1)
    balancer = First()
    pool[1].weight = 100
    balancer.weights_changed()
    assert pick(balancer, pool) is pool[0]


# the factory


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("round_robin", RoundRobin),
        ("least_conn", LeastConn),
        ("random_two", RandomTwo),
        ("hash", ConsistentHash),
        ("first", First),
    ],
)
def test_make_balancer_builds_each_algorithm_by_its_config_name(name: str, kind: type) -> None:
    assert isinstance(make_balancer(name, servers(1), random.Random(0)), kind)
    assert name in ALGORITHMS


def test_make_balancer_rejects_an_unknown_name_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown balance algorithm 'leastconn'.*'least_conn'"):
        make_balancer("leastconn", servers(1), random.Random(0))


# properties

weights_st = st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=8)


@given(
    algorithm=st.sampled_from(ALGORITHMS),
    weights=weights_st,
    data=st.data(),
)
def test_every_algorithm_picks_one_of_the_candidates_or_none_without_any(
    algorithm: str, weights: list[int], data: st.DataObject
) -> None:
    pool = servers(*weights)
    for server in pool:
        server.active = data.draw(st.integers(min_value=0, max_value=20))
    balancer = make_balancer(algorithm, pool, random.Random(data.draw(st.integers())))
    for _ in range(5):
        chosen = data.draw(st.lists(st.sampled_from(range(len(pool))), unique=True))
        candidates = [pool[i] for i in sorted(chosen)]
        key = data.draw(st.none() | st.binary(max_size=16))
        picked = balancer.pick(candidates, key)
        if candidates:
            assert picked in candidates
        else:
            assert picked is None


@given(weights=weights_st, rounds=st.integers(min_value=1, max_value=3))
def test_smooth_round_robin_picks_each_server_weight_times_per_cycle(
    weights: list[int], rounds: int
) -> None:
    pool = servers(*weights)
    balancer = RoundRobin()
    for _ in range(rounds):
        counts = Counter(pick(balancer, pool) for _ in range(sum(weights)))
        assert [counts[s] for s in pool] == weights


@given(weights=weights_st, data=st.data())
def test_least_conn_always_picks_a_least_loaded_server(
    weights: list[int], data: st.DataObject
) -> None:
    pool = servers(*weights)
    for server in pool:
        server.active = data.draw(st.integers(min_value=0, max_value=50))
    picked = pick(LeastConn(), pool)
    assert all(picked.active * s.weight <= s.active * picked.weight for s in pool)
