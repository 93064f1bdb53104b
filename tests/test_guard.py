"""The address guard and opt-outs, against loopback servers only.

Addresses outside 127.0.0.0/8 and ::1 appear here as data for the classifier:
no test opens a connection to them, and names resolve from a table
(``fake_dns``), so no DNS query leaves the machine either.
"""
from __future__ import annotations

import ipaddress
import json
import io

import aiohttp.connector
import pytest
from PIL import Image

from datagen.fetch import FetchConfig, FetchStep
from datagen.fetch.guard import AddressPolicy, classify
from datagen.fetch.optout import opt_out
from datagen.core.records import pairs_table
from datagen.core.steps import RunContext
from servers import LocalServer, Reply


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def fetch(tmp_path, urls, **cfg):
    base = dict(timeout_s=2.0, retries=0)
    base.update(cfg)
    step = FetchStep(FetchConfig(**base), RunContext(run_dir=tmp_path / "run", recipe_dir=tmp_path))
    rows = [{"key": f"k{i}", "source": "t", "url": u, "caption": "a photo of a thing"} for i, u in enumerate(urls)]
    out = step.process(pairs_table(rows))
    assert out.kept.num_rows + out.rejects.num_rows == len(rows)
    return out, step.ctx.stats["fetch"]


def reasons(out) -> dict[str, str]:
    return dict(zip(out.rejects.column("key").to_pylist(), out.rejects.column("reason").to_pylist()))


def details(out) -> list[str]:
    return out.rejects.column("detail").to_pylist()


# ----------------------------------------------------------------- classifier (addresses only, no connections)

# Every blocked range, in its IPv4 form, the IPv4-mapped IPv6 form (::ffff:a.b.c.d), the NAT64 form
# (64:ff9b::a.b.c.d) and the 6to4 form (2002:AABB:CCDD::).
V4_BLOCKED = [
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"),
    ("10.0.0.1", "private"), ("10.255.255.254", "private"), ("172.16.0.1", "private"), ("172.31.255.1", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"), ("100.127.255.254", "carrier-grade NAT"),
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "broadcast"),
    ("192.0.0.8", "reserved"), ("192.0.2.1", "reserved"), ("198.51.100.7", "reserved"), ("203.0.113.9", "reserved"),
    ("198.18.0.1", "reserved"), ("192.88.99.1", "reserved"),
]
V6_BLOCKED = [
    ("::", "unspecified"), ("::1", "loopback"),
    ("fe80::1", "link-local"), ("fe80::1%2", "link-local"), ("febf:ffff::1", "link-local"),
    ("fc00::1", "private"), ("fd00:ec2::254", "private"), ("fec0::1", "private"), ("64:ff9b:1::1", "private"),
    ("ff02::1", "multicast"), ("ff0e::fb", "multicast"),
    ("2001:db8::1", "reserved"), ("100::1", "reserved"), ("2001:0:4136:e378::1", "reserved"), ("::1.2.3.4", "reserved"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "100.63.255.255", "100.128.0.0", "172.32.0.1", "11.0.0.1",
          "2606:4700:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


def v6_forms(v4: str) -> list[str]:
    n = int(ipaddress.IPv4Address(v4))
    return [f"::ffff:{v4}", str(ipaddress.IPv6Address((0x64FF9B << 96) | n)),
            str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1))]


@pytest.mark.parametrize("addr,category", V4_BLOCKED)
def test_classifier_blocks_every_ipv4_range_and_its_ipv6_forms(addr, category):
    assert classify(addr) == category
    for form in v6_forms(addr):
        assert classify(form) == category, form
    assert AddressPolicy().refusal(addr) == category


@pytest.mark.parametrize("addr,category", V6_BLOCKED)
def test_classifier_blocks_every_ipv6_range(addr, category):
    assert classify(addr) == category
    assert AddressPolicy().refusal(addr) == category


@pytest.mark.parametrize("addr", PUBLIC)
def test_classifier_passes_public_addresses(addr):
    assert classify(addr) is None and AddressPolicy().refusal(addr) is None


def test_policy_openings_are_narrow():
    loop = AddressPolicy(allow_loopback=True)
    assert loop.refusal("127.0.0.5") is None and loop.refusal("::1") is None
    assert loop.refusal("::ffff:127.0.0.1") is None
    assert loop.refusal("10.0.0.1") == "private" and loop.refusal("169.254.169.254") == "link-local"
    mirror = AddressPolicy.from_strings(False, ["10.1.2.0/24", "fd00:1::/64"])
    assert mirror.refusal("10.1.2.3") is None and mirror.refusal("::ffff:10.1.2.3") is None
    assert mirror.refusal("fd00:1::5") is None
    assert mirror.refusal("10.1.3.1") == "private" and mirror.refusal("127.0.0.1") == "loopback"


def test_allow_networks_must_be_cidrs():
    assert FetchConfig(allow_networks=["10.0.0.1/8"]).allow_networks == ["10.0.0.0/8"]
    with pytest.raises(ValueError, match=r"allow_networks\[1\] = 'mirror' is not a CIDR"):
        FetchConfig(allow_networks=["10.0.0.0/8", "mirror"])


# ----------------------------------------------------------------- the guard on real connections (loopback only)


def test_default_policy_refuses_loopback_and_the_server_sees_nothing(tmp_path, fake_dns):
    fake_dns["images.test"] = ["127.0.0.1"]
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=jpeg()))
        url = srv.url("/a.jpg")
        named = f"http://images.test:{srv.port}/b.jpg"
        mapped = f"http://[::ffff:127.0.0.1]:{srv.port}/c.jpg"
        decimal = f"http://2130706433:{srv.port}/d.jpg"
        out, stats = fetch(tmp_path, [url, named, mapped, decimal])
        assert srv.count() == 0  # refused before any connection
    assert set(reasons(out).values()) == {"blocked_address"}
    assert "loopback" in details(out)[0] and "fetch.allow_loopback" in details(out)[0]
    assert stats["policy"] == {"allow_local_files": False, "allow_loopback": False, "allow_networks": [],
                               "respect_x_robots_tag": True, "respect_robots": False}


def test_a_name_with_one_private_record_is_refused(tmp_path, fake_dns):
    fake_dns["mixed.test"] = ["127.0.0.1", "10.0.0.7"]
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=jpeg()))
        out, _ = fetch(tmp_path, [f"http://mixed.test:{srv.port}/a.jpg"], allow_loopback=True)
        assert srv.count() == 0
    assert reasons(out) == {"k0": "blocked_address"}
    assert "10.0.0.7" in details(out)[0]


def test_allow_networks_refuses_a_redirect_hop_outside_it(tmp_path, fake_dns):
    with LocalServer("127.0.0.2") as inner, LocalServer() as outer:
        inner.route("/", lambda req: Reply(200, body=jpeg()))
        outer.route("/ok/", lambda req: Reply(200, body=jpeg()))
        outer.route("/hop/", lambda req: Reply(302, headers={"Location": inner.url("/secret.jpg")}))
        out, stats = fetch(tmp_path, [outer.url("/hop/a.jpg"), outer.url("/ok/b.jpg")], allow_networks=["127.0.0.1/32"])
        assert inner.count() == 0  # the hop was refused before connecting
        assert outer.count() == 2
    assert reasons(out) == {"k0": "blocked_address"}
    assert "127.0.0.2" in details(out)[0]
    assert out.kept.column("key").to_pylist() == ["k1"]
    assert stats["policy"]["allow_networks"] == ["127.0.0.1/32"]


def test_redirect_to_localhost_is_refused_by_default_policy_of_a_mirror(tmp_path, fake_dns):
    """A mirror allowed by CIDR cannot bounce us to another loopback port by name."""
    fake_dns["mirror.test"] = ["127.0.0.2"]
    with LocalServer("127.0.0.2") as mirror, LocalServer() as other:
        other.route("/", lambda req: Reply(200, body=jpeg()))
        mirror.route("/", lambda req: Reply(302, headers={"Location": f"http://localhost:{other.port}/x.jpg"}))
        out, _ = fetch(tmp_path, [f"http://mirror.test:{mirror.port}/a.jpg"], allow_networks=["127.0.0.2/32"])
        assert other.count() == 0 and mirror.count() == 1
    assert reasons(out) == {"k0": "blocked_address"}


def test_connects_to_the_checked_address_not_a_second_lookup(tmp_path, fake_dns, monkeypatch):
    """DNS rebinding: the name is resolved once per connection and the socket goes to that literal."""
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])  # a rebinding server would switch after the check
    fake_dns_calls = []
    from datagen.fetch import guard

    async def rebinding(host, port):
        fake_dns_calls.append(host)
        return next(answers)

    monkeypatch.setattr(guard, "resolve", rebinding)
    connected = []
    real = aiohttp.connector.aiohappyeyeballs.start_connection

    async def spy(addr_infos, *a, **kw):  # the addresses aiohttp's connector opens sockets to
        connected.extend(info[4][0] for info in addr_infos)
        return await real(addr_infos, *a, **kw)

    monkeypatch.setattr(aiohttp.connector.aiohappyeyeballs, "start_connection", spy)
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=jpeg()))
        out, _ = fetch(tmp_path, [f"http://rebind.test:{srv.port}/a.jpg"], allow_loopback=True)
        assert srv.requests[0].headers["host"] == f"rebind.test:{srv.port}"  # the name still goes in Host
    assert out.kept.num_rows == 1
    assert fake_dns_calls == ["rebind.test"] and connected == ["127.0.0.1"]


def test_allow_loopback_lets_the_test_server_through(tmp_path, fake_dns):
    with LocalServer() as srv:
        srv.route("/", lambda req: Reply(200, body=jpeg()))
        out, stats = fetch(tmp_path, [srv.url("/a.jpg"), f"http://localhost:{srv.port}/b.jpg"], allow_loopback=True)
    assert out.kept.num_rows == 2 and stats["policy"]["allow_loopback"] is True


# ----------------------------------------------------------------- opt-outs


@pytest.mark.parametrize("values,expected", [
    (["noai"], "noai"),
    (["noimageai, nofollow"], "noimageai, nofollow"),
    (["NoIndex"], "NoIndex"),
    (["noimageindex"], "noimageindex"),
    (["googlebot: noindex"], None),  # another agent's line
    (["datagen: noai"], "datagen: noai"),
    (["img2dataset: noimageai"], "img2dataset: noimageai"),
    (["max-image-preview: large", "all"], None),
    (["unavailable_after: 25 Jun 2030 15:00:00 PST, noai"], "unavailable_after: 25 Jun 2030 15:00:00 PST, noai"),
    (["nofollow", "otherbot: noai", "noarchive"], None),
    ([], None),
])
def test_x_robots_tag_parsing(values, expected):
    assert opt_out(values) == expected


def test_x_robots_tag_opt_out_is_honoured_unless_the_recipe_turns_it_off(tmp_path):
    with LocalServer() as srv:
        srv.route("/ai/", lambda req: Reply(200, body=jpeg(), headers={"X-Robots-Tag": "noai, noimageai"}))
        srv.route("/", lambda req: Reply(200, body=jpeg(), headers={"X-Robots-Tag": "googlebot: noindex"}))
        urls = [srv.url("/ai/a.jpg"), srv.url("/b.jpg")]
        out, _ = fetch(tmp_path, urls, allow_loopback=True)
        assert reasons(out) == {"k0": "opted_out"} and out.kept.column("key").to_pylist() == ["k1"]
        assert "noai, noimageai" in details(out)[0]
        out, stats = fetch(tmp_path, urls, allow_loopback=True, respect_x_robots_tag=False)
    assert out.kept.num_rows == 2
    assert stats["policy"]["respect_x_robots_tag"] is False  # the manifest says opt-outs were ignored


def test_robots_txt_read_once_per_host_and_disallowed_urls_rejected(tmp_path):
    robots = "User-agent: otherbot\nDisallow: /\n\nUser-agent: *\nDisallow: /private/\n"  # the * group is ours
    with LocalServer() as srv, LocalServer("127.0.0.3") as broken, LocalServer("127.0.0.4") as none:
        srv.route("/robots.txt", lambda req: Reply(200, body=robots))
        srv.route("/", lambda req: Reply(200, body=jpeg()))
        broken.route("/robots.txt", lambda req: Reply(503, body="down"))
        broken.route("/", lambda req: Reply(200, body=jpeg()))
        none.route("/", lambda req: Reply(200, body=jpeg()))  # /robots.txt is a 404: no rules
        ctx = RunContext(run_dir=tmp_path / "run", recipe_dir=tmp_path)
        step = FetchStep(FetchConfig(allow_loopback=True, respect_robots=True, retries=0), ctx)
        rows = lambda *urls: pairs_table([{"key": f"k{i}", "source": "t", "url": u} for i, u in enumerate(urls)])  # noqa
        first = step.process(rows(srv.url("/private/a.jpg"), srv.url("/ok/b.jpg"), srv.url("/private/c.jpg"),
                                  broken.url("/d.jpg"), none.url("/e.jpg")))
        second = step.process(rows(srv.url("/ok/f.jpg"), srv.url("/private/g.jpg")))
        assert srv.count("/robots.txt") == 1  # once per host, across batches
        assert srv.count("/private/") == 0 and broken.count("/d") == 0
    assert reasons(first) == {"k0": "robots_disallowed", "k2": "robots_disallowed", "k3": "robots_unreachable"}
    assert first.kept.column("key").to_pylist() == ["k1", "k4"]
    assert reasons(second) == {"k1": "robots_disallowed"}
    assert ctx.stats["fetch"]["policy"]["respect_robots"] is True


def test_robots_rules_apply_to_redirect_hops_and_to_our_own_group(tmp_path):
    """A public page that redirects into a disallowed path is refused at the hop; a group for 'datagen'
    replaces the * group for us (RFC 9309), and so does the token set in the recipe."""
    with LocalServer() as a, LocalServer("127.0.0.5") as b:
        b.route("/robots.txt", lambda req: Reply(200, body="User-agent: *\nDisallow: /\n\n"
                                                          "User-agent: datagen\nDisallow: /no-datagen/\n"))
        b.route("/", lambda req: Reply(200, body=jpeg()))
        a.route("/robots.txt", lambda req: Reply(404))
        a.route("/go/", lambda req: Reply(302, headers={"Location": b.url("/no-datagen/x.jpg")}))
        out, stats = fetch(tmp_path, [a.url("/go/1.jpg"), b.url("/fine/2.jpg")], allow_loopback=True,
                           respect_robots=True)
        assert b.count("/no-datagen/") == 0 and a.count("/go/") == 1
        other, _ = fetch(tmp_path, [b.url("/fine/3.jpg")], allow_loopback=True, respect_robots=True,
                         robots_user_agent="somebot")
    assert reasons(out) == {"k0": "robots_disallowed"} and out.kept.column("key").to_pylist() == ["k1"]
    assert stats["robots_fetched"] == 2
    assert reasons(other) == {"k0": "robots_disallowed"}  # for somebot the * group disallows everything


def test_the_policy_survives_merging_stats_of_many_parts(tmp_path):
    from datagen.core.executor import merge_stats

    step = FetchStep(FetchConfig(allow_networks=["10.1.2.0/24"]), RunContext(run_dir=tmp_path, recipe_dir=tmp_path))
    part = {"rows_in": 3, "policy": {"allow_networks": ["10.1.2.0/24"], "allow_loopback": False}}
    merged: dict = {}
    for _ in range(3):
        merge_stats(merged, json.loads(json.dumps(part)))
    step.derive_stats(merged)
    assert merged["rows_in"] == 9 and merged["policy"]["allow_networks"] == ["10.1.2.0/24"]


# ----------------------------------------------------------------- TLS through the pinned address

def _self_signed(tmp_path, name: str):
    """A certificate for ``name`` (its own CA) and a server context serving it."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    return cert_path, server


def test_https_connects_to_the_checked_address_and_verifies_the_certificate_for_the_name(tmp_path, fake_dns,
                                                                                          monkeypatch):
    """The socket goes to the checked literal, but SNI and the certificate check use the URL's name: a
    certificate for the name passes, one for another name is refused, and verify_tls: false accepts both."""
    import ssl

    from datagen.fetch import http

    fake_dns["images.test"] = ["127.0.0.1"]
    fake_dns["other.test"] = ["127.0.0.1"]
    ca, server_ctx = _self_signed(tmp_path, "images.test")

    real = http._tls_context

    def trusting(verify: bool) -> ssl.SSLContext:  # certifi's bundle replaced by our CA, checks left on
        if not verify:
            return real(False)
        return ssl.create_default_context(cafile=str(ca))

    monkeypatch.setattr(http, "_tls_context", trusting)
    with LocalServer(tls=server_ctx) as srv:
        srv.route("/", lambda req: Reply(200, body=jpeg()))
        good = f"https://images.test:{srv.port}/a.jpg"
        wrong = f"https://other.test:{srv.port}/b.jpg"
        out, _ = fetch(tmp_path / "verify", [good, wrong], allow_loopback=True)
        assert out.kept.column("key").to_pylist() == ["k0"]
        assert reasons(out) == {"k1": "connection_error"}
        assert "certificate" in details(out)[0].lower() or "hostname" in details(out)[0].lower()
        assert "images.test" in srv.server_names and "other.test" in srv.server_names
        assert srv.requests[0].headers["host"] == f"images.test:{srv.port}"
        out, _ = fetch(tmp_path / "noverify", [good, wrong], allow_loopback=True, verify_tls=False)
        assert out.kept.num_rows == 2


def test_hosts_no_resolver_could_be_asked_about_are_invalid_urls_at_every_hop(tmp_path, fake_dns):
    """A space or an empty label in a host name is a reject invalid_url, in the row's URL or a redirect's,
    and never becomes a DNS query."""
    fake_dns["good.test"] = ["127.0.0.1"]
    with LocalServer() as srv:
        srv.route("/ok/", lambda req: Reply(200, body=jpeg()))
        srv.route("/hop/", lambda req: Reply(302, headers={"Location": "http://bad host.test/x.jpg"}))
        urls = ["http://exa mple.test/a.jpg", "http://.../b.jpg", srv.url("/hop/c.jpg"),
                f"http://good.test:{srv.port}/ok/d.jpg"]
        out, _ = fetch(tmp_path, urls, allow_loopback=True)
    assert reasons(out) == {"k0": "invalid_url", "k1": "invalid_url", "k2": "invalid_url"}
    assert "redirected to" in details(out)[2]
    assert out.kept.column("key").to_pylist() == ["k3"]
    assert fake_dns.calls == ["good.test"]
