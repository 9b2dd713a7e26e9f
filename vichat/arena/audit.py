"""``vichat arena leaderboard --audit``: who the votes come from, and which sources look anomalous.

Addresses and sessions are the salted hashes stored with each vote, so the audit can group votes
without knowing anyone's address. A source is flagged when it

- cast more votes on one UTC day than the leaderboard counts (``address_cap``: the excess is
  already left out of the ratings), or
- has at least ``min_votes`` votes and one fresh session for nearly every vote (ratio >= 0.8: a
  script resetting its session, the ballot-stuffing signature), or
- has at least ``min_votes`` decisive votes and >= 90% of them favour the same model (Chatbot
  Arena likewise sets aside users whose votes are too unlikely under the overall preferences).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from .votes import Ballot, deduplicated


@dataclass
class SourceStats:
    """The votes of one address."""

    address: str
    votes: int = 0
    sessions: set[str] = field(default_factory=set)
    favoured: Counter = field(default_factory=Counter)
    busiest_day: int = 0
    flags: list[str] = field(default_factory=list)


def _distribution(counts: Sequence[int]) -> dict[str, float]:
    if not counts:
        return {"groups": 0, "median": 0, "p90": 0, "p99": 0, "max": 0}
    ordered = sorted(counts)

    def q(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1) + 0.5))]

    return {"groups": len(ordered), "median": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": ordered[-1]}


def audit(ballots: Sequence[Ballot], address_cap: int = 50, min_votes: int = 10) -> dict:
    """The per-address and per-session vote distributions, the flagged addresses (most votes
    first) and how many votes the leaderboard's de-duplication leaves out."""
    sources: dict[str, SourceStats] = {}
    per_session: Counter = Counter()
    days: dict[str, Counter] = defaultdict(Counter)
    for a, b, vote, address, session, voted_at, _prompt in ballots:
        key = address or "(unknown)"
        s = sources.setdefault(key, SourceStats(key))
        s.votes += 1
        s.sessions.add(session)
        per_session[session] += 1
        days[key][int(voted_at // 86_400)] += 1
        if vote in ("a", "b"):
            s.favoured[a if vote == "a" else b] += 1
    flagged = []
    for key, s in sources.items():
        s.busiest_day = max(days[key].values())
        if key == "(unknown)":
            continue
        if address_cap and s.busiest_day > address_cap:
            s.flags.append(f"{s.busiest_day} votes in one day (> {address_cap})")
        if s.votes >= min_votes and len(s.sessions) >= 0.8 * s.votes:
            s.flags.append(f"{len(s.sessions)} sessions for {s.votes} votes")
        decisive = sum(s.favoured.values())
        if decisive >= min_votes:
            model, n = s.favoured.most_common(1)[0]
            if n >= 0.9 * decisive:
                s.flags.append(f"{n}/{decisive} decisive votes favour {model}")
        if s.flags:
            flagged.append(s)
    flagged.sort(key=lambda s: -s.votes)
    kept = len(deduplicated(ballots, address_cap))
    return {
        "votes": len(ballots),
        "counted": kept,
        "left_out": len(ballots) - kept,
        "per_address": _distribution([s.votes for s in sources.values()]),
        "per_session": _distribution(list(per_session.values())),
        "flagged": [{"address": s.address, "votes": s.votes, "sessions": len(s.sessions),
                     "busiest_day": s.busiest_day, "flags": s.flags} for s in flagged],
    }


def format_audit(report: dict) -> str:
    """The audit as text for the terminal."""
    lines = [f"{report['votes']} votes; the leaderboard counts {report['counted']} "
             f"({report['left_out']} left out by de-duplication and the per-address daily cap)"]
    for name in ("per_address", "per_session"):
        d = report[name]
        lines.append(f"votes {name.replace('_', ' ')}: {d['groups']} groups, median {d['median']}, "
                     f"p90 {d['p90']}, p99 {d['p99']}, max {d['max']}")
    if not report["flagged"]:
        lines.append("no address flagged")
    for f in report["flagged"]:
        lines.append(f"FLAGGED address {f['address'][:12]}…: {f['votes']} votes, {f['sessions']} sessions; "
                     + "; ".join(f["flags"]))
    return "\n".join(lines)
