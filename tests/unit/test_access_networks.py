"""Address lists (nginx allow/deny, first match wins, unmatched allowed), their parser and
list files, and the real client address behind trusted proxies."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd.access.networks import (
    MEMO_SIZE,
    AccessList,
    ListError,
    Network,
    Rule,
    parse_network,
    parse_rules,
    real_client,
)
from proxyd.config.values import networks as config_networks


def acl(*lines: str, base_dir: str = ".") -> AccessList:
    return parse_rules(enumerate(lines, 1), base_dir)


def net(text: str) -> Network:
    return ipaddress.ip_network(text)


# Judging addresses


def test_first_matching_rule_decides() -> None:
    rules = acl("deny 10.1.0.0/16", "allow 10.0.0.0/8", "deny all")
    assert not rules.allows("10.1.2.3")
    assert rules.allows("10.2.0.1")
    assert not rules.allows("192.0.2.1")


def test_later_wider_rule_does_not_override_earlier_narrow_one() -> None:
    rules = acl("allow 10.1.2.3", "deny 10.0.0.0/8")
    assert rules.allows("10.1.2.3")
    assert not rules.allows("10.1.2.4")


def test_address_no_rule_holds_is_allowed() -> None:
    rules = acl("deny 10.0.0.0/8", "deny 2001:db8::/32")
    assert rules.allows("192.0.2.1")
    assert rules.allows("2001:db9::1")
    assert not rules.allows("10.255.255.255")


def test_empty_list_allows_everything() -> None:
    rules = AccessList()
    assert rules.allows("10.0.0.1")
    assert rules.allows("::1")
    assert rules.allows("")


def test_network_bounds_are_inclusive_and_exact() -> None:
    rules = acl("allow 192.0.2.0/24", "deny all")
    assert rules.allows("192.0.2.0")
    assert rules.allows("192.0.2.255")
    assert not rules.allows("192.0.1.255")
    assert not rules.allows("192.0.3.0")


def test_ipv6_rules_hold_ipv6_addresses_only() -> None:
    rules = acl("allow 2001:db8::/32", "deny ::/0")
    assert rules.allows("2001:db8:1::7")
    assert not rules.allows("2001:db9::1")
    assert rules.allows("192.0.2.1")


def test_ipv4_mapped_address_is_judged_as_its_ipv4_address() -> None:
    rules = acl("allow 10.0.0.0/8", "deny all")
    assert rules.allows("::ffff:10.1.2.3")
    assert not rules.allows("::ffff:192.0.2.1")


def test_rule_for_a_mapped_network_holds_the_ipv4_addresses_it_maps() -> None:
    rules = acl("deny ::ffff:10.0.0.0/104", "deny ::ffff:192.0.2.7/128")
    assert not rules.allows("10.9.9.9")
    assert not rules.allows("10.255.0.1")
    assert not rules.allows("::ffff:10.9.9.9")
    assert rules.allows("11.0.0.1")
    assert rules.allows("9.255.255.255")
    assert not rules.allows("192.0.2.7")
    assert rules.allows("192.0.2.6")


def test_wide_ipv6_rule_does_not_hold_ipv4_clients_on_a_dual_stack_socket() -> None:
    rules = acl("deny ::/0")
    assert rules.allows("::ffff:192.0.2.1")
    assert not rules.allows("2001:db8::1")


def test_address_with_a_zone_index_is_judged_by_its_address() -> None:
    rules = acl("deny fe80::/10")
    assert not rules.allows("fe80::1%eth0")
    assert not rules.allows("febf::1%2")
    assert rules.allows("fec0::1%eth0")


@pytest.mark.parametrize("peer", ["", "/run/proxyd.sock", "not an address", "10.0.0.300"])
def test_non_ip_address_is_judged_by_all_rules_only(peer: str) -> None:
    assert not acl("allow 10.0.0.0/8", "deny all").allows(peer)
    assert acl("deny 0.0.0.0/0", "deny ::/0").allows(peer)
    assert acl("deny 10.0.0.0/8", "allow all", "deny all").allows(peer)


def test_rules_after_all_never_apply() -> None:
    rules = acl("allow all", "deny 10.0.0.0/8")
    assert rules.allows("10.0.0.1")


def test_verdicts_stay_right_when_the_memo_fills_and_is_emptied() -> None:
    rules = acl("deny 10.0.0.0/8")
    for n in range(MEMO_SIZE * 2 + 10):
        ip = str(ipaddress.IPv4Address(0x0A000000 + n))
        assert not rules.allows(ip)
        assert rules.allows("192.0.2.1")
    assert len(rules._memo) <= MEMO_SIZE


def test_lists_with_the_same_rules_are_equal_whatever_they_have_judged() -> None:
    first = acl("allow 10.0.0.0/8", "deny all")
    second = acl("allow 10.0.0.0/8", "deny all")
    first.allows("10.0.0.1")
    assert first == second
    assert hash(first) == hash(second)
    assert first != acl("allow 10.0.0.0/8")


MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def naive_allows(rules: list[Rule], ip: str) -> bool:
    """nginx's algorithm as written: each rule in turn, the first that holds decides."""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip)
    except ValueError:
        return next((rule.allow for rule in rules if rule.network is None), True)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for rule in rules:
        network = rule.network
        if network is not None and network.version == 6 and network.subnet_of(MAPPED):
            # as the module's documentation says: the IPv4 network it maps
            network = ipaddress.IPv4Network(
                (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
            )
        if network is None or address in network:
            return rule.allow
    return True


# Few distinct prefixes in a small space, so that rules overlap and nest often.
v4_networks = st.builds(
    lambda value, prefix: ipaddress.IPv4Network((value, prefix), strict=False),
    st.integers(0x0A000000, 0x0A0000FF) | st.integers(0, 2**32 - 1),
    st.sampled_from([0, 8, 24, 28, 30, 31, 32]),
)
v6_networks = st.builds(
    lambda value, prefix: ipaddress.IPv6Network((value, prefix), strict=False),
    st.integers(0, 255) | st.integers(0, 2**128 - 1) | st.integers(0xFFFF0A000000, 0xFFFF0A0000FF),
    st.sampled_from([0, 64, 96, 104, 120, 124, 128]),
)
rules_strategy = st.lists(
    st.builds(Rule, st.booleans(), v4_networks | v6_networks | st.none()), max_size=12
)
addresses = st.one_of(
    st.integers(0x0A000000, 0x0A0000FF).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.integers(0, 255).map(lambda n: str(ipaddress.IPv6Address(n))),
    st.integers(0x0A000000, 0x0A0000FF).map(lambda n: f"::ffff:{ipaddress.IPv4Address(n)}"),
    st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
    st.sampled_from(["", "garbage", "fe80::1%eth0"]),
)


@settings(max_examples=300)
@given(rules_strategy, st.lists(addresses, min_size=1, max_size=20))
def test_compiled_table_agrees_with_judging_rule_by_rule(rules: list[Rule], ips: list[str]) -> None:
    compiled = AccessList(tuple(rules))
    for ip in ips:
        assert compiled.allows(ip) == naive_allows(rules, ip), ip


@settings(max_examples=300)
@given(rules_strategy, v4_networks | v6_networks)
def test_network_edges_are_judged_like_rule_by_rule(rules: list[Rule], edge: Network) -> None:
    compiled = AccessList(tuple(rules))
    for ip in (edge.network_address, edge.broadcast_address):
        for neighbour in (int(ip) - 1, int(ip), int(ip) + 1):
            if 0 <= neighbour < 2**edge.max_prefixlen:
                text = str(type(ip)(neighbour))
                assert compiled.allows(text) == naive_allows(rules, text), text


# Parsing rules


def test_parses_each_rule_form_in_order() -> None:
    rules = acl("allow 10.0.0.0/8", "deny 2001:db8::/32", "allow 127.0.0.1", "  deny   all  ")
    assert rules.rules == (
        Rule(True, net("10.0.0.0/8")),
        Rule(False, net("2001:db8::/32")),
        Rule(True, net("127.0.0.1/32")),
        Rule(False, None),
    )
    assert [str(rule) for rule in rules.rules] == [
        "allow 10.0.0.0/8",
        "deny 2001:db8::/32",
        "allow 127.0.0.1/32",
        "deny all",
    ]
    assert rules.files == ()


def test_blank_lines_are_skipped() -> None:
    assert acl("", "allow 10.0.0.0/8", "   ").rules == (Rule(True, net("10.0.0.0/8")),)


def test_host_bits_set_is_an_error_suggesting_the_network() -> None:
    with pytest.raises(ListError) as e:
        parse_rules([(12, "allow 10.0.0.1/8")], ".")
    assert e.value.line == 12
    assert e.value.found == "'10.0.0.1/8' (host bits set)"
    assert e.value.hint == "did you mean '10.0.0.0/8'?"
    assert e.value.path is None and e.value.file_line is None
    assert "expected an address, a CIDR network, 'all' or 'file PATH'" in str(e.value)


def test_unknown_action_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(ListError) as e:
        parse_rules([(3, "alow 10.0.0.0/8")], ".")
    assert e.value.line == 3
    assert e.value.expected.startswith("'allow' or 'deny'")
    assert e.value.found == "'alow 10.0.0.0/8'"
    assert e.value.hint == "did you mean 'allow'?"


def test_action_is_case_sensitive() -> None:
    with pytest.raises(ListError, match="did you mean 'deny'"):
        acl("DENY all")


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("allow 10.0.0.300", "'10.0.0.300'"),
        ("deny 10.0.0.0/33", "'10.0.0.0/33'"),
        ("deny 10.0.0.0/255.0.0.0", "'10.0.0.0/255.0.0.0' (the prefix length must be a number)"),
        ("deny fe80::%eth0/64", "'fe80::%eth0/64' (a zone index is not allowed)"),
        ("allow example.com", "'example.com'"),
        ("allow", "nothing"),
        ("deny file", "nothing"),
        ("allow 10.0.0.0/8 192.0.2.0/24", "'allow 10.0.0.0/8 192.0.2.0/24'"),
    ],
)
def test_bad_rule_is_an_error_saying_what_was_found(text: str, found: str) -> None:
    with pytest.raises(ListError) as e:
        parse_rules([(1, "allow all"), (7, text)], ".")
    assert e.value.line == 7
    assert e.value.found == found


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        acl("permit all")


# List files


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_file_entries_take_the_rule_position_and_action(tmp_path: Path) -> None:
    write(
        tmp_path / "office.txt", "# office\n10.1.0.0/16\n\n  192.0.2.7  # printer\n2001:db8::/48\n"
    )
    rules = acl("deny 10.1.2.0/24", "allow file office.txt", "deny all", base_dir=str(tmp_path))
    assert rules.rules == (
        Rule(False, net("10.1.2.0/24")),
        Rule(True, net("10.1.0.0/16")),
        Rule(True, net("192.0.2.7/32")),
        Rule(True, net("2001:db8::/48")),
        Rule(False, None),
    )
    assert not rules.allows("10.1.2.3")
    assert rules.allows("10.1.3.3")
    assert rules.allows("2001:db8::9")
    assert not rules.allows("192.0.2.8")
    assert rules.files == (str(tmp_path / "office.txt"),)


def test_relative_file_is_relative_to_base_dir_and_absolute_stays(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    write(tmp_path / "lists" / "a.txt", "10.0.0.0/8\n")
    absolute = write(tmp_path / "b.txt", "192.0.2.0/24\n")
    rules = acl("deny file lists/a.txt", f"deny file {absolute}", base_dir=str(tmp_path))
    assert rules.files == (str(tmp_path / "lists" / "a.txt"), absolute)
    assert [rule.network for rule in rules.rules] == [net("10.0.0.0/8"), net("192.0.2.0/24")]


def test_file_named_twice_is_read_twice_and_listed_once(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "10.0.0.0/8\n")
    rules = acl("deny file a.txt", "allow all", "allow file ./a.txt", base_dir=str(tmp_path))
    assert len(rules.rules) == 3
    assert rules.files == (str(tmp_path / "a.txt"),)


def test_quoted_file_name_may_hold_spaces(tmp_path: Path) -> None:
    write(tmp_path / "my office.txt", "10.0.0.0/8\n")
    rules = acl('allow file "my office.txt"', base_dir=str(tmp_path))
    assert rules.rules == (Rule(True, net("10.0.0.0/8")),)
    assert acl("allow file my office.txt", base_dir=str(tmp_path)) == rules


def test_empty_file_adds_no_rules_but_is_remembered(tmp_path: Path) -> None:
    write(tmp_path / "none.txt", "# nobody yet\n\n")
    rules = acl("deny file none.txt", base_dir=str(tmp_path))
    assert rules.rules == ()
    assert rules.files == (str(tmp_path / "none.txt"),)


def test_bad_file_entry_names_the_file_and_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "office.txt", "10.0.0.0/8\n# next is wrong\n10.0.0.300\n")
    with pytest.raises(ListError) as e:
        parse_rules([(12, "allow file office.txt")], str(tmp_path))
    assert (e.value.line, e.value.path, e.value.file_line) == (12, path, 3)
    assert str(e.value) == f"{path}:3: expected an address or CIDR network; found '10.0.0.300'"


def test_file_entry_with_host_bits_suggests_the_network(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "192.0.2.1/24\n")
    with pytest.raises(ListError) as e:
        acl("deny file a.txt", base_dir=str(tmp_path))
    assert e.value.file_line == 1
    assert e.value.found == "'192.0.2.1/24' (host bits set)"
    assert e.value.hint == "did you mean '192.0.2.0/24'?"


def test_file_line_with_two_entries_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "10.0.0.0/8\n10.0.0.1 10.0.0.2\n")
    with pytest.raises(ListError) as e:
        acl("deny file a.txt", base_dir=str(tmp_path))
    assert e.value.file_line == 2
    assert e.value.expected == "one address or CIDR network a line"


def test_file_that_is_not_utf8_fails_at_the_bad_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"10.0.0.0/8\n\xff\xfe\n")
    with pytest.raises(ListError) as e:
        acl("deny file a.txt", base_dir=str(tmp_path))
    assert e.value.file_line == 2


def test_missing_file_is_an_error_naming_it_and_the_reason(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.txt")
    with pytest.raises(ListError) as e:
        parse_rules([(4, "deny file nope.txt")], str(tmp_path))
    assert (e.value.line, e.value.path, e.value.file_line) == (4, path, None)
    assert e.value.found == f"{path!r} (No such file or directory)"
    assert str(e.value).startswith("expected a readable file")


def test_directory_is_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ListError) as e:
        acl("deny file .", base_dir=str(tmp_path))
    assert e.value.path == str(tmp_path)
    assert "Is a directory" in e.value.found


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_file_without_permission_is_an_error_with_the_os_reason(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    write(path, "10.0.0.0/8\n")
    path.chmod(0)
    with pytest.raises(ListError, match="Permission denied"):
        acl("deny file secret.txt", base_dir=str(tmp_path))


# Parser properties

any_network = v4_networks | v6_networks


@given(st.lists(st.tuples(st.booleans(), any_network | st.none()), max_size=20))
def test_rules_written_out_parse_back_to_the_same_rules(
    pairs: list[tuple[bool, Network | None]],
) -> None:
    rules = tuple(Rule(allow, network) for allow, network in pairs)
    lines = [str(rule) for rule in rules]
    assert acl(*lines).rules == rules


@given(st.lists(st.text(max_size=40), max_size=5))
def test_any_text_parses_or_raises_list_error(lines: list[str]) -> None:
    try:
        acl(*lines, base_dir="/nonexistent/proxyd-test")
    except ListError as e:
        assert 1 <= e.line <= len(lines)
        assert e.expected and e.found


@given(st.text(max_size=40))
def test_parse_network_accepts_only_what_ipaddress_does_strictly(word: str) -> None:
    try:
        expected: Network | None = ipaddress.ip_network(word, strict=True)
    except ValueError:
        expected = None
    try:
        parsed: Network | None = parse_network(word)
    except ValueError:
        parsed = None
    if parsed is not None:
        assert parsed == expected


# The real client


TRUSTED = config_networks("10.0.0.0/8 2001:db8::/32")


def test_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    assert real_client("192.0.2.9", [b"198.51.100.1"], TRUSTED) == "192.0.2.9"


def test_no_trusted_proxies_means_the_peer() -> None:
    assert real_client("10.0.0.1", [b"198.51.100.1"], ()) == "10.0.0.1"


def test_trusted_peer_without_forwarded_for_is_the_client() -> None:
    assert real_client("10.0.0.1", [], TRUSTED) == "10.0.0.1"
    assert real_client("10.0.0.1", [b"", b" , "], TRUSTED) == "10.0.0.1"


def test_walk_skips_trusted_addresses_from_the_right() -> None:
    forwarded = [b"203.0.113.5, 198.51.100.1, 10.0.0.7, 10.0.0.8"]
    assert real_client("10.0.0.1", forwarded, TRUSTED) == "198.51.100.1"


def test_several_fields_are_combined_in_order() -> None:
    forwarded = [b"203.0.113.5", b"198.51.100.1 ,10.0.0.7", b"10.0.0.8"]
    assert real_client("10.0.0.1", forwarded, TRUSTED) == "198.51.100.1"
    assert real_client("10.0.0.1", [b"10.0.0.9", b"203.0.113.5"], TRUSTED) == "203.0.113.5"


def test_all_trusted_gives_the_leftmost() -> None:
    assert real_client("10.0.0.1", [b"10.0.0.5, 10.0.0.6", b"10.0.0.7"], TRUSTED) == "10.0.0.5"


def test_garbage_stops_the_walk_at_the_last_good_address() -> None:
    forwarded = [b"203.0.113.5, unknown, 10.0.0.7"]
    assert real_client("10.0.0.1", forwarded, TRUSTED) == "10.0.0.7"
    assert real_client("10.0.0.1", [b"203.0.113.5, 999.1.1.1"], TRUSTED) == "10.0.0.1"


def test_entries_with_ports_or_brackets_give_the_bare_address() -> None:
    assert real_client("10.0.0.1", [b"198.51.100.1:4711"], TRUSTED) == "198.51.100.1"
    assert real_client("10.0.0.1", [b"[2001:db9::1]:443"], TRUSTED) == "2001:db9::1"
    assert real_client("10.0.0.1", [b"[2001:DB9:0::1]"], TRUSTED) == "2001:db9::1"
    assert real_client("10.0.0.1", [b"2001:db8::5, 2001:db9::7"], TRUSTED) == "2001:db9::7"


@pytest.mark.parametrize(
    "entry", [b"1.2.3.4:", b"1.2.3.4:x", b"[::1", b"[::1]x", b"[1.2.3.4]", b"fe80::1%eth0"]
)
def test_malformed_entries_are_garbage(entry: bytes) -> None:
    assert real_client("10.0.0.1", [entry], TRUSTED) == "10.0.0.1"


def test_mapped_addresses_are_trusted_as_ipv4() -> None:
    assert real_client("::ffff:10.0.0.1", [b"::ffff:10.0.0.2, 192.0.2.1"], TRUSTED) == "192.0.2.1"
    assert real_client("::ffff:10.0.0.1", [b"::ffff:192.0.2.1"], TRUSTED) == "::ffff:c000:201"


def test_unix_socket_peer_is_never_trusted() -> None:
    assert real_client("", [b"192.0.2.1"], TRUSTED) == ""


@given(st.lists(st.binary(max_size=30), max_size=4))
def test_real_client_is_the_peer_or_a_forwarded_address(forwarded: list[bytes]) -> None:
    client = real_client("10.0.0.1", forwarded, TRUSTED)
    assert client == "10.0.0.1" or ipaddress.ip_address(client)
