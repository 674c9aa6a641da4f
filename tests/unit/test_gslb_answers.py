"""The sans-IO answers of a [gslb] (proxyd.gslb.answers): every rcode, weighting, networks
and EDNS Client Subnet, truncation. Queries and answers are dnspython messages."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.update
import pytest

from proxyd.config.gslb_model import GslbConfig
from proxyd.config.load import loads
from proxyd.gslb.answers import TCP_MAX, UDP_MIN, Zone


class View:
    """The healthy servers by pool, as a test sets them."""

    def __init__(self, healthy: Mapping[str, Sequence[tuple[str, int]]]) -> None:
        self.servers = dict(healthy)
        self.configured = {
            pool: frozenset(6 if ":" in a else 4 for a, _ in servers)
            for pool, servers in healthy.items()
        }

    def healthy(self, pool: str) -> Sequence[tuple[str, int]]:
        return self.servers[pool]

    def families(self, pool: str) -> frozenset[int]:
        return self.configured[pool]


WEB = [("127.0.0.1", 1), ("127.0.0.2", 2), ("::1", 1)]
EU = [("127.0.0.9", 1)]
VIEW = View({"web": WEB, "eu": EU, "v6": [("::2", 1)]})


def config(records: str = "", **keys: str) -> GslbConfig:
    text = (
        "[pool web]\nservers = 127.0.0.1:80 127.0.0.2:80 [::1]:80\n"
        "[pool eu]\nservers = 127.0.0.9:80\n"
        "[pool v6]\nservers = [::2]:80\n"
        "[gslb demo]\nlisten = udp:5353\nzone = demo.test\nrecords =\n"
        + (
            records
            or "    www -> pool web\n    www -> pool eu from 10.0.0.0/8\n    a.b -> pool web\n"
        )
        + "".join(f"{key} = {value}\n" for key, value in keys.items())
    )
    (gslb,) = loads(text, "proxyd.ini").gslb
    return gslb


def zone(records: str = "", seed: int = 1, **keys: str) -> Zone:
    return Zone(config(records, **keys), serial=2026120701, rng=random.Random(seed))


def ask(
    z: Zone,
    name: str,
    rdtype: str = "A",
    client: str = "127.0.0.1",
    view: View = VIEW,
    limit: int = UDP_MIN,
    **query: object,
) -> dns.message.Message:
    wire = dns.message.make_query(name, rdtype, **query).to_wire()  # type: ignore[arg-type]
    reply = z.answer(wire, client, limit, view)
    assert reply.wire is not None
    answer = dns.message.from_wire(reply.wire)
    assert dns.rcode.to_text(answer.rcode()) == reply.rcode
    return answer


def addresses(answer: dns.message.Message) -> list[str]:
    return [rdata.address for rrset in answer.answer for rdata in rrset]


def test_a_configured_name_gets_the_healthy_ipv4_servers_authoritatively() -> None:
    answer = ask(zone(), "www.demo.test")
    assert answer.rcode() == dns.rcode.NOERROR
    assert answer.flags & dns.flags.AA and answer.flags & dns.flags.QR
    assert not answer.flags & dns.flags.RA
    assert sorted(addresses(answer)) == ["127.0.0.1", "127.0.0.2"]
    assert answer.answer[0].ttl == 30


def test_names_are_case_insensitive_and_the_question_is_echoed_as_asked() -> None:
    answer = ask(zone(), "wWw.DEMO.test.", "AAAA")
    assert addresses(answer) == ["::1"]
    assert answer.question[0].name.to_text() == "wWw.DEMO.test."


def test_a_family_the_pool_does_not_have_is_nodata_with_the_soa() -> None:
    answer = ask(zone("    v6only -> pool v6\n"), "v6only.demo.test", "A")
    assert answer.rcode() == dns.rcode.NOERROR and answer.flags & dns.flags.AA
    assert answer.answer == []
    (soa,) = answer.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 30
    assert soa[0].minimum == 30 and soa[0].serial == 2026120701


@pytest.mark.parametrize("rdtype", ["MX", "TXT", "ANY", "CNAME"])
def test_other_types_at_a_configured_name_are_nodata(rdtype: str) -> None:
    answer = ask(zone(), "www.demo.test", rdtype)
    assert (answer.rcode(), answer.answer) == (dns.rcode.NOERROR, [])
    assert answer.authority[0].rdtype == dns.rdatatype.SOA


def test_the_apex_answers_soa_and_ns() -> None:
    z = zone(nameservers="ns1.demo.test ns2.demo.test")
    soa = ask(z, "demo.test", "SOA")
    assert soa.answer[0][0].mname.to_text() == "ns1.demo.test."
    assert soa.answer[0][0].rname.to_text() == "hostmaster.demo.test."
    ns = ask(z, "demo.test", "NS")
    assert sorted(r.target.to_text() for r in ns.answer[0]) == ["ns1.demo.test.", "ns2.demo.test."]
    assert ns.flags & dns.flags.AA
    nodata = ask(z, "demo.test", "A")
    assert (nodata.rcode(), nodata.answer) == (dns.rcode.NOERROR, [])


def test_the_apex_may_have_addresses() -> None:
    assert sorted(addresses(ask(zone("    @ -> pool eu\n"), "demo.test"))) == ["127.0.0.9"]


def test_an_empty_non_terminal_is_nodata_and_below_a_name_is_nxdomain() -> None:
    assert ask(zone(), "b.demo.test").rcode() == dns.rcode.NOERROR
    assert addresses(ask(zone(), "a.b.demo.test"))
    below = ask(zone(), "x.www.demo.test")
    assert below.rcode() == dns.rcode.NXDOMAIN


def test_an_unconfigured_name_in_the_zone_is_nxdomain_with_the_soa() -> None:
    answer = ask(zone(), "nope.demo.test")
    assert answer.rcode() == dns.rcode.NXDOMAIN and answer.flags & dns.flags.AA
    assert answer.authority[0].rdtype == dns.rdatatype.SOA


@pytest.mark.parametrize("name", ["example.test", "demo.test.example", "test", "xdemo.test"])
def test_a_name_outside_the_zone_is_refused_without_aa(name: str) -> None:
    answer = ask(zone(), name)
    assert answer.rcode() == dns.rcode.REFUSED
    assert not answer.flags & dns.flags.AA
    assert answer.answer == answer.authority == []


def test_another_class_is_refused() -> None:
    wire = dns.message.make_query("www.demo.test", "A", rdclass=dns.rdataclass.CH).to_wire()
    reply = zone().answer(wire, "127.0.0.1", UDP_MIN, VIEW)
    assert reply.rcode == "REFUSED"


def test_garbage_after_a_header_is_formerr_with_the_query_id() -> None:
    wire = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www"
    reply = zone().answer(wire, "127.0.0.1", UDP_MIN, VIEW)
    assert reply.rcode == "FORMERR" and reply.wire is not None
    answer = dns.message.from_wire(reply.wire)
    assert answer.id == 0x1234 and answer.flags & dns.flags.QR and answer.flags & dns.flags.RD
    assert answer.question == []


def test_two_questions_are_formerr() -> None:
    query = dns.message.make_query("www.demo.test", "A")
    query.question.append(dns.message.make_query("a.b.demo.test", "A").question[0])
    reply = zone().answer(query.to_wire(), "127.0.0.1", UDP_MIN, VIEW)
    assert reply.rcode == "FORMERR"


def test_no_question_is_formerr() -> None:
    query = dns.message.Message(id=7)
    reply = zone().answer(query.to_wire(), "127.0.0.1", UDP_MIN, VIEW)
    assert reply.rcode == "FORMERR"


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.STATUS, dns.opcode.IQUERY])
def test_opcodes_other_than_query_are_notimp(opcode: dns.opcode.Opcode) -> None:
    query = dns.message.make_query("www.demo.test", "A")
    query.set_opcode(opcode)
    reply = zone().answer(query.to_wire(), "127.0.0.1", UDP_MIN, VIEW)
    assert reply.rcode == "NOTIMP" and reply.wire is not None
    assert dns.message.from_wire(reply.wire).opcode() == opcode


def test_an_update_is_notimp() -> None:
    update = dns.update.UpdateMessage("demo.test")
    update.add("www", 30, "A", "192.0.2.1")
    assert zone().answer(update.to_wire(), "127.0.0.1", UDP_MIN, VIEW).rcode == "NOTIMP"


def test_a_client_subnet_longer_than_its_family_is_formerr() -> None:
    wire = bytearray(dns.message.make_query("www.demo.test", "A", **ecs("10.1.2.0", 24)).to_wire())
    option = wire.find(b"\x00\x08\x00\x07\x00\x01")  # ECS, length 7, family 1
    wire[option + 6] = 40  # SOURCE PREFIX-LENGTH 40 for an IPv4 address
    assert zone().answer(bytes(wire), "127.0.0.1", UDP_MIN, VIEW).rcode == "FORMERR"


def test_a_source_that_is_no_ip_address_gets_the_default_pool() -> None:
    assert sorted(addresses(ask(zone(), "www.demo.test", client=""))) == ["127.0.0.1", "127.0.0.2"]


def test_an_unknown_edns_version_is_badvers() -> None:
    query = dns.message.make_query("www.demo.test", "A", use_edns=1)
    reply = zone().answer(query.to_wire(), "127.0.0.1", UDP_MIN, VIEW)
    assert reply.rcode == "BADVERS" and reply.wire is not None
    assert dns.message.from_wire(reply.wire).rcode() == dns.rcode.BADVERS


@pytest.mark.parametrize("wire", [b"", b"\x00" * 11])
def test_fewer_bytes_than_a_header_get_nothing(wire: bytes) -> None:
    assert zone().answer(wire, "127.0.0.1", UDP_MIN, VIEW).wire is None


def test_a_response_is_never_answered() -> None:
    response = dns.message.make_response(dns.message.make_query("www.demo.test", "A"))
    reply = zone().answer(response.to_wire(), "127.0.0.1", UDP_MIN, VIEW)
    assert (reply.wire, reply.rcode) == (None, None)


def test_no_healthy_server_is_servfail_without_aa() -> None:
    view = View({"web": [], "eu": [], "v6": []})
    view.configured = VIEW.configured
    answer = ask(zone(), "www.demo.test", view=view)
    assert answer.rcode() == dns.rcode.SERVFAIL and not answer.flags & dns.flags.AA


def test_servfail_is_per_family() -> None:
    view = View({"web": [("::1", 1)], "eu": [], "v6": []})
    view.configured = VIEW.configured
    assert ask(zone(), "www.demo.test", "A", view=view).rcode() == dns.rcode.SERVFAIL
    assert addresses(ask(zone(), "www.demo.test", "AAAA", view=view)) == ["::1"]


def test_max_answers_draws_servers_in_proportion_to_their_weights() -> None:
    z = zone(max_answers="1")
    firsts = Counter(addresses(ask(z, "www.demo.test"))[0] for _ in range(3000))
    assert set(firsts) == {"127.0.0.1", "127.0.0.2"}
    assert 1.8 < firsts["127.0.0.2"] / firsts["127.0.0.1"] < 2.2
    assert all(len(addresses(ask(z, "www.demo.test"))) == 1 for _ in range(10))


def test_every_healthy_server_is_listed_in_a_weighted_order() -> None:
    z = zone()
    firsts = Counter(addresses(ask(z, "www.demo.test"))[0] for _ in range(3000))
    assert 1.8 < firsts["127.0.0.2"] / firsts["127.0.0.1"] < 2.2
    assert sorted(addresses(ask(z, "www.demo.test"))) == ["127.0.0.1", "127.0.0.2"]


def test_a_client_in_a_network_gets_its_preferred_pool() -> None:
    assert addresses(ask(zone(), "www.demo.test", client="10.1.2.3")) == ["127.0.0.9"]
    assert "127.0.0.9" not in addresses(ask(zone(), "www.demo.test", client="11.0.0.1"))


def test_the_default_pool_answers_when_the_preferred_one_has_no_healthy_server() -> None:
    view = View({"web": WEB, "eu": [], "v6": []})
    view.configured = VIEW.configured
    answer = ask(zone(), "www.demo.test", client="10.1.2.3", view=view)
    assert sorted(addresses(answer)) == ["127.0.0.1", "127.0.0.2"]


def test_the_most_specific_network_wins() -> None:
    records = (
        "    www -> pool web\n"
        "    www -> pool eu from 10.0.0.0/8\n"
        "    www -> pool v6 from 10.1.0.0/16\n"
    )
    assert addresses(ask(zone(records), "www.demo.test", "AAAA", client="10.1.2.3")) == ["::2"]
    assert addresses(ask(zone(records), "www.demo.test", "A", client="10.1.2.3")) == ["127.0.0.9"]
    assert addresses(ask(zone(records), "www.demo.test", "A", client="10.2.0.1")) == ["127.0.0.9"]


def ecs(address: str, srclen: int) -> dict[str, object]:
    return {"use_edns": 0, "options": [dns.edns.ECSOption(address, srclen)]}


def echoed(answer: dns.message.Message) -> dns.edns.ECSOption:
    (option,) = [o for o in answer.options if isinstance(o, dns.edns.ECSOption)]
    return option


def test_the_client_subnet_chooses_the_pool_and_is_echoed_with_its_scope() -> None:
    answer = ask(zone(), "www.demo.test", client="127.0.0.1", **ecs("10.9.8.0", 24))
    assert addresses(answer) == ["127.0.0.9"]
    option = echoed(answer)
    assert (option.address, option.srclen, option.scopelen) == ("10.9.8.0", 24, 24)


def test_the_scope_is_lengthened_to_a_configured_network_inside_the_client_subnet() -> None:
    records = "    www -> pool web\n    www -> pool eu from 10.1.2.0/24\n"
    answer = ask(zone(records), "www.demo.test", **ecs("10.1.0.0", 16))
    assert echoed(answer).scopelen == 24


def test_a_name_without_networks_answers_with_scope_zero() -> None:
    answer = ask(zone(), "a.b.demo.test", **ecs("10.9.8.0", 24))
    assert echoed(answer).scopelen == 0


def test_a_source_prefix_of_zero_gets_the_default_pool_for_everyone() -> None:
    answer = ask(zone(), "www.demo.test", client="10.1.1.1", **ecs("0.0.0.0", 0))
    assert "127.0.0.9" not in addresses(answer)
    assert echoed(answer).scopelen == 0


def test_with_edns_client_subnet_off_the_source_address_decides() -> None:
    z = zone(edns_client_subnet="off")
    answer = ask(z, "www.demo.test", client="127.0.0.1", **ecs("10.9.8.0", 24))
    assert "127.0.0.9" not in addresses(answer)
    assert [o for o in answer.options if isinstance(o, dns.edns.ECSOption)] == []


def test_an_ipv6_client_subnet_matches_ipv6_networks() -> None:
    records = "    www -> pool web\n    www -> pool eu from 2001:db8::/32\n"
    answer = ask(zone(records), "www.demo.test", **ecs("2001:db8:1::", 48))
    assert addresses(answer) == ["127.0.0.9"]
    assert echoed(answer).scopelen == 48


BIG = View({"big": [(f"127.0.{i // 250}.{i % 250 + 1}", 1) for i in range(100)]})


def big_zone() -> Zone:
    servers = " ".join(f"{a}:80" for a, _ in BIG.servers["big"])
    text = (
        f"[pool big]\nservers = {servers}\n"
        "[gslb demo]\nlisten = udp:5353\nzone = demo.test\nrecords = www -> pool big\n"
    )
    (gslb,) = loads(text, "proxyd.ini").gslb
    return Zone(gslb, serial=1, rng=random.Random(1))


def test_an_answer_over_512_bytes_without_edns_is_truncated() -> None:
    wire = dns.message.make_query("www.demo.test", "A").to_wire()
    reply = big_zone().answer(wire, "127.0.0.1", UDP_MIN, BIG)
    assert reply.truncated and reply.wire is not None and len(reply.wire) <= 512
    answer = dns.message.from_wire(reply.wire)
    assert answer.flags & dns.flags.TC and answer.answer == []
    assert answer.question[0].name.to_text() == "www.demo.test."


def test_the_edns_payload_size_raises_the_limit_up_to_1232() -> None:
    z = big_zone()
    small = dns.message.make_query("www.demo.test", "A", use_edns=0, payload=4096).to_wire()
    reply = z.answer(small, "127.0.0.1", UDP_MIN, BIG)
    assert reply.truncated and reply.wire is not None and len(reply.wire) <= 1232
    assert dns.message.from_wire(reply.wire).edns == 0
    fits = zone(max_answers="0")
    wire = dns.message.make_query("www.demo.test", "A", use_edns=0, payload=600).to_wire()
    assert not fits.answer(wire, "127.0.0.1", UDP_MIN, VIEW).truncated


def test_limit_exactly_fitting_is_not_truncated() -> None:
    z = big_zone()
    wire = dns.message.make_query("www.demo.test", "A").to_wire()
    full = z.answer(wire, "127.0.0.1", TCP_MAX, BIG)
    assert full.wire is not None and not full.truncated
    size = len(full.wire)
    assert size > 512
    edns = dns.message.make_query("www.demo.test", "A", use_edns=0, payload=size).to_wire()
    # The answer with EDNS carries an OPT record (11 bytes) more than `size`.
    assert z.answer(edns, "127.0.0.1", UDP_MIN, BIG).truncated
    assert len(addresses(dns.message.from_wire(full.wire))) == 100


def test_over_tcp_the_whole_answer_is_sent() -> None:
    wire = dns.message.make_query("www.demo.test", "A").to_wire()
    reply = big_zone().answer(wire, "127.0.0.1", TCP_MAX, BIG)
    assert reply.wire is not None and not reply.truncated
    assert len(addresses(dns.message.from_wire(reply.wire))) == 100
