"""MariaDB GTID positions: a list of domain-server-seq, at most one per domain ("0-1-42,1-7-3").

A position covers another when, in every domain of the other, its sequence number is at least as high
(gtid_strict_mode keeps sequence numbers increasing within a domain, whatever server wrote them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_GTID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


class GtidError(ValueError):
    pass


@dataclass(frozen=True)
class Position:
    """domain -> (server_id, seq_no); empty for a server that never wrote a transaction."""

    domains: tuple[tuple[int, int, int], ...] = ()  # sorted (domain, server_id, seq_no)

    @classmethod
    def parse(cls, text: str) -> Position:
        """'0-1-42,1-7-3' (spaces and an empty string allowed); GtidError names what is not a GTID."""
        found: dict[int, tuple[int, int]] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            m = _GTID.match(part)
            if not m:
                raise GtidError(f"{part!r} is not a GTID (expected domain-server-seq, like 0-1-42)")
            domain, server, seq = (int(g) for g in m.groups())
            if domain in found and found[domain][1] >= seq:
                continue
            found[domain] = (server, seq)
        return cls(tuple(sorted((d, s, n) for d, (s, n) in found.items())))

    def seq(self, domain: int) -> int:
        return next((n for d, _, n in self.domains if d == domain), 0)

    def covers(self, other: Position) -> bool:
        """Every transaction up to `other` is also up to self."""
        return all(self.seq(d) >= n for d, _, n in other.domains)

    def advanced(self, gtid: str) -> Position:
        """This position after the transaction `gtid` (one domain-server-seq)."""
        return Position.parse(",".join([str(self), gtid]))

    def transactions_after(self, other: Position) -> int:
        """How many transactions lie between `other` and self (sequence numbers are dense per domain)."""
        return sum(max(0, n - other.seq(d)) for d, _, n in self.domains)

    def __str__(self) -> str:
        return ",".join(f"{d}-{s}-{n}" for d, s, n in self.domains)
