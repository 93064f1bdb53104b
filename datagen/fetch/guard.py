"""The address guard: which IP addresses a download may connect to, checked after DNS.

A URL list from the web is untrusted input. Without a guard, a crafted row
(or a redirect from a public host) makes the run call services on this machine
or its network: 127.0.0.1, the cloud metadata service at 169.254.169.254, a
router at 192.168.0.1. Trusted crawlers check the *resolved* address of every
connection, and connect to exactly the address they checked, so a DNS answer
that changes between the check and the connect (DNS rebinding) cannot slip
through. This module does that:

- ``classify`` names the special-purpose range an address is in (IPv4 and
  IPv6; IPv4-mapped, NAT64 and 6to4 forms are judged by the IPv4 address they
  carry), or returns None for a public address.
- ``AddressPolicy`` says what a recipe opened up: ``allow_loopback`` (tests,
  a mirror on this machine) and ``allow_networks`` (CIDRs of an internal mirror).
- ``checked_addresses`` resolves a host (or reads its literal), refuses if ANY
  of its addresses is blocked (a public name with one private record is an
  attack, not a mirror), and returns the checked literals.
- ``GuardedResolver`` is aiohttp's resolver under every download: the
  connector connects to the literals it returns, so every TCP connection to a
  name (the first request and each redirect hop) goes to a checked address.
  aiohttp bypasses resolvers for address literals, so ``fetch.http`` checks
  each hop's literal host itself before the request. TLS still verifies the
  certificate against the host name (aiohttp passes the URL's name as SNI),
  so pinning the IP costs nothing in safety. The session never uses proxies
  from the environment (a proxy would resolve names itself and the guard
  would check only the proxy).
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Optional, Union

import aiohttp
import aiohttp.abc

from datagen.fetch.errors import FetchError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_N = ipaddress.ip_network

# (network, category). Categories are what a reject's detail names. Order matters only for overlaps
# (the first match wins), e.g. 255.255.255.255 is "broadcast" before 240.0.0.0/4 "reserved".
BLOCKED_RANGES: tuple[tuple[IPNetwork, str], ...] = (
    # IPv4 (IANA special-purpose registry)
    (_N("0.0.0.0/8"), "unspecified"),  # "this network"; 0.0.0.0 reaches the local host on Linux
    (_N("10.0.0.0/8"), "private"),
    (_N("100.64.0.0/10"), "carrier-grade NAT"),
    (_N("127.0.0.0/8"), "loopback"),
    (_N("169.254.0.0/16"), "link-local"),  # 169.254.169.254 is the cloud metadata service
    (_N("172.16.0.0/12"), "private"),
    (_N("192.0.0.0/24"), "reserved"),  # IETF protocol assignments
    (_N("192.0.2.0/24"), "reserved"),  # documentation (TEST-NET-1)
    (_N("192.88.99.0/24"), "reserved"),  # deprecated 6to4 relay anycast
    (_N("192.168.0.0/16"), "private"),
    (_N("198.18.0.0/15"), "reserved"),  # benchmarking
    (_N("198.51.100.0/24"), "reserved"),  # documentation (TEST-NET-2)
    (_N("203.0.113.0/24"), "reserved"),  # documentation (TEST-NET-3)
    (_N("224.0.0.0/4"), "multicast"),
    (_N("255.255.255.255/32"), "broadcast"),
    (_N("240.0.0.0/4"), "reserved"),
    # IPv6
    (_N("::/128"), "unspecified"),
    (_N("::1/128"), "loopback"),
    (_N("::/96"), "reserved"),  # deprecated IPv4-compatible addresses
    (_N("64:ff9b:1::/48"), "private"),  # local-use NAT64
    (_N("100::/64"), "reserved"),  # discard-only
    (_N("2001::/32"), "reserved"),  # Teredo: the IPv4 inside is obfuscated, so it cannot be judged
    (_N("2001:db8::/32"), "reserved"),  # documentation
    (_N("fc00::/7"), "private"),  # unique local (fd00:ec2::254 is AWS's IPv6 metadata service)
    (_N("fe80::/10"), "link-local"),
    (_N("fec0::/10"), "private"),  # deprecated site-local
    (_N("ff00::/8"), "multicast"),
)

_NAT64 = _N("64:ff9b::/96")


def embedded_ipv4(ip: IPAddress) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 address carries and routes to: IPv4-mapped, NAT64 or 6to4; else None."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return None


def classify(ip: Union[str, IPAddress]) -> Optional[str]:
    """The blocked category of an address ("loopback", "private", ...), or None for a public one.

    IPv6 forms that carry an IPv4 address are judged by that address, so
    ``::ffff:127.0.0.1`` is loopback and ``64:ff9b::a00:1`` is private."""
    ip = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    inner = embedded_ipv4(ip)
    if inner is not None:
        return classify(inner)
    if ip.version == 6 and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    for net, category in BLOCKED_RANGES:
        if ip.version == net.version and ip in net:
            return category
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """What a recipe opened up beyond public addresses (everything else in BLOCKED_RANGES stays closed)."""

    allow_loopback: bool = False
    allow_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def from_strings(cls, allow_loopback: bool, networks: Iterable[str]) -> "AddressPolicy":
        return cls(allow_loopback, tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def refusal(self, ip: Union[str, IPAddress]) -> Optional[str]:
        """Why ``ip`` is refused ("loopback", ...), or None when a connection to it is allowed."""
        ip = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        category = classify(ip)
        if category is None:
            return None
        if category == "loopback" and self.allow_loopback:
            return None
        forms = [ip] + [a for a in (embedded_ipv4(ip),) if a is not None]
        if any(a.version == n.version and a in n for a in forms for n in self.allow_networks):
            return None
        return category


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (getaddrinfo, in a thread), in its preferred order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        if sockaddr[0] not in seen:
            seen.append(sockaddr[0])
    return seen


# Tests swap this for a table (no DNS traffic leaves the machine in tests); a recipe never does.
resolve: Resolver = system_resolve


class DnsCache:
    """Resolver answers per host name, shared by every request of this process (a worker).

    A LAION shard holds thousands of URLs on a few hundred hosts; asking the
    system resolver for each connection is what makes img2dataset's runs fail
    with name-resolution errors (its #98, #360). Answers are kept ``ttl_s``;
    a name that does not exist (EAI_NONAME, EAI_NODATA, no addresses) is kept
    ``negative_ttl_s`` so its rows fail at once; a temporary failure
    (EAI_AGAIN) is never kept. Concurrent lookups of one name in one event loop
    share one query. ``resolver`` None means the module's ``resolve`` at call
    time (what tests swap). Counters: ``lookups`` (queries sent), ``hits``
    (answered from the cache or a shared query), ``failures`` (queries that
    failed)."""

    MAX_ENTRIES = 200_000

    def __init__(self, ttl_s: float = 300.0, negative_ttl_s: float = 60.0, resolver: Optional[Resolver] = None):
        self.ttl_s, self.negative_ttl_s, self.resolver = ttl_s, negative_ttl_s, resolver
        self._answers: dict[str, tuple[float, Union[list[str], tuple[int, str]]]] = {}
        self._pending: dict[tuple[int, str], asyncio.Task] = {}
        self._lock = threading.Lock()
        self.lookups = self.hits = self.failures = 0

    def configure(self, ttl_s: float, negative_ttl_s: float) -> None:
        self.ttl_s, self.negative_ttl_s = ttl_s, negative_ttl_s

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()
            self._pending.clear()

    def counters(self) -> tuple[int, int, int]:
        return self.lookups, self.hits, self.failures

    @staticmethod
    def _answer(value: Union[list[str], tuple[int, str]]) -> list[str]:
        if isinstance(value, tuple):
            raise socket.gaierror(*value)
        return list(value)

    async def resolve(self, host: str, port: int) -> list[str]:
        with self._lock:
            entry = self._answers.get(host)
        if entry is not None and entry[0] > time.monotonic():
            self.hits += 1
            return self._answer(entry[1])
        key = (id(asyncio.get_running_loop()), host)
        task = self._pending.get(key)
        if task is None:
            task = self._pending[key] = asyncio.ensure_future(self._lookup(host, port))
            task.add_done_callback(lambda t: (self._pending.pop(key, None), t.cancelled() or t.exception()))
        else:
            self.hits += 1
        # shielded: a caller's connect timeout abandons its wait, never the query the others share
        return self._answer(await asyncio.shield(task))

    async def _lookup(self, host: str, port: int) -> Union[list[str], tuple[int, str]]:
        self.lookups += 1
        try:
            value: Union[list[str], tuple[int, str]] = list(await (self.resolver or resolve)(host, port))
            ttl = self.ttl_s
            if not value:
                value, ttl = (socket.EAI_NODATA, "no addresses"), self.negative_ttl_s
        except socket.gaierror as e:
            value = (e.errno if e.errno is not None else socket.EAI_FAIL, e.strerror or str(e))
            ttl = 0.0 if e.errno == socket.EAI_AGAIN else self.negative_ttl_s
        if isinstance(value, tuple):
            self.failures += 1
        if ttl > 0:
            with self._lock:
                if len(self._answers) >= self.MAX_ENTRIES:  # drop the older half: insertion order is age
                    for k in list(self._answers)[: self.MAX_ENTRIES // 2]:
                        del self._answers[k]
                self._answers[host] = (time.monotonic() + ttl, value)
        return value


# One cache per process, shared by every client and batch of a worker (fetch.http configures its TTLs).
DNS = DnsCache()


@functools.lru_cache(maxsize=1 << 14)  # per request otherwise; the same hosts come back
def _literal(host: str) -> Optional[IPAddress]:
    """The address a host names by itself, including the forms getaddrinfo reads as IPv4 without DNS
    (``2130706433``, ``0x7f.1``, ``127.1``): those never reach a resolver, they ARE an address."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


async def checked_addresses(policy: AddressPolicy, host: str, port: int, timeout: Optional[float],
                            dns: Optional[DnsCache] = None) -> list[str]:
    """The addresses a connection to ``host`` may use: a literal as it is, a name through the DNS cache;
    every one checked. Raises FetchError("blocked_address") when ANY is refused (a public name with one
    private record is an attack, not a mirror), ``socket.gaierror`` when the name does not resolve,
    ``asyncio.TimeoutError`` when resolving takes longer than ``timeout``."""
    literal = _literal(host)
    if literal is not None:
        addrs = [str(literal)]
    else:
        addrs = await asyncio.wait_for((dns if dns is not None else DNS).resolve(host, port), timeout)
        if not addrs:
            raise socket.gaierror(socket.EAI_NODATA, f"cannot resolve {host!r}: no addresses")
    for a in addrs:
        why = policy.refusal(a)
        if why is not None:
            shown = host if literal is not None else f"{host} ({a})"
            how = "fetch.allow_loopback: true, or " if why == "loopback" else ""
            raise FetchError(
                "blocked_address",
                f"{shown} is a {why} address; refused by default. A trusted mirror there can be opened with "
                f"{how}fetch.allow_networks: [CIDR]",
            )
    return addrs


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver for every download: the names' checked addresses, so the connector connects
    to exactly the literals that were checked (no second lookup can change the answer). aiohttp skips
    the resolver for a URL whose host is an address literal: ``fetch.http`` checks those itself, at
    every hop, with ``checked_addresses``."""

    def __init__(self, policy: AddressPolicy, timeout: Optional[float], dns: Optional[DnsCache] = None):
        self.policy, self.timeout, self.dns = policy, timeout, dns

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[dict]:
        addrs = await checked_addresses(self.policy, host, port, self.timeout, self.dns)
        return [{"hostname": host, "host": a, "port": port, "proto": 0,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV} for a in addrs]

    async def close(self) -> None:
        pass
