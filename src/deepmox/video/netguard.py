"""Which network addresses a source URL may reach.

deepmox fetches ``http(s)://`` sources on behalf of whoever submitted the job,
so a URL must not become a way into the daemon's own network: loopback,
private, link-local (which holds the cloud metadata service at
169.254.169.254), carrier-grade NAT, multicast, reserved and unspecified
addresses are refused, as are IPv6 forms of the same (IPv4-mapped, NAT64,
6to4, unique-local, the EC2 metadata address ``fd00:ec2::254``).

The rule is applied to the addresses a host name *resolves to*, so decimal
(``http://2130706433/``), octal (``http://0177.0.0.1/``) and hexadecimal
spellings, and names that resolve to private addresses, are refused like the
literal forms; and the connection is then made to the address that was
checked, so a second resolution cannot swap it (DNS rebinding). Every
redirect is checked again.
"""

from __future__ import annotations

import ipaddress
import socket

import trio

from ..errors import PermanentError, TransientError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
#: IETF protocol assignments: no media server lives there, and Python's own
#: is_global misses some of it (192.0.0.8, the dummy address, on 3.11)
_IETF = ipaddress.ip_network("192.0.0.0/24")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


class ForbiddenAddressError(PermanentError):
    """The URL leads to an address deepmox does not fetch from."""


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def why_forbidden(addr: Address) -> str | None:
    """The reason ``addr`` may not be fetched from, or None when it may."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_v4(addr)
        if inner is not None:
            reason = why_forbidden(inner)
            return f"{reason} (inside {addr})" if reason else None
    if addr in _METADATA:
        return "a cloud metadata address"
    checks = (
        (addr.is_loopback, "a loopback address"),
        (addr.is_link_local, "a link-local address"),
        (addr.is_private, "a private address"),
        (isinstance(addr, ipaddress.IPv4Address) and addr in _CGNAT, "a shared (CGNAT) address"),
        (isinstance(addr, ipaddress.IPv4Address) and addr in _IETF,
         "an IETF protocol address"),
        (addr.is_multicast, "a multicast address"),
        (addr.is_unspecified, "an unspecified address"),
        (addr.is_reserved, "a reserved address"),
        (not addr.is_global, "not a public address"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


async def resolve_public(host: str, port: int, *, allow_private: bool) -> list[Address]:
    """The addresses ``host`` resolves to, all of them checked; raises
    :class:`ForbiddenAddressError` if any is forbidden (a name with one public
    and one private address is refused: which one a connection uses is not
    ours to choose)."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:  # the resolver itself failed: try again later
            raise TransientError(f"cannot resolve {host!r} now: {exc.strerror}") from None
        raise PermanentError(f"cannot resolve {host!r}: {exc.strerror}") from None
    except UnicodeError as exc:  # a label over 63 characters, a name IDNA refuses
        raise PermanentError(f"{host[:100]!r} is not a host name: {exc}") from None
    addrs: list[Address] = []
    for info in infos:
        raw = str(info[4][0])
        addr = ipaddress.ip_address(raw.split("%", 1)[0])
        if addr not in addrs:
            addrs.append(addr)
    if not addrs:
        raise PermanentError(f"{host!r} resolves to no address")
    if not allow_private:
        for addr in addrs:
            reason = why_forbidden(addr)
            if reason:
                shown = host if host == str(addr) else f"{host!r} ({addr})"
                raise ForbiddenAddressError(
                    f"refusing to fetch from {shown}: {reason}; set [video] "
                    "allow_private_networks = true to allow it")
    return addrs
