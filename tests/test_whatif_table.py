"""`geodns whatif`'s table: users the database cannot place are shown as the console shows
them ("not located"), not as a country code "??"."""

from __future__ import annotations

from geodns.daemon.whatif import UNKNOWN_COUNTRY, format_table


def test_unlocated_users_are_named_as_in_the_console() -> None:
    move = {
        "from": "ashburn",
        "to": "singapore",
        "weight": 1,
        "added_km": None,
        "added_rtt_ms": None,
        "records": ["www.cdn.example.com A"],
        "examples": ["127.0.0.1"],
    }
    result = {
        "site": "dc-americas",
        "action": "fail",
        "source": "traffic",
        "down_now": [],
        "down_after": ["ashburn", "dc-americas"],
        "total": 4,
        "moved": 2,
        "moves": [
            {**move, "country": "DE", "name": "Germany", "from": "frankfurt"},
            {**move, "country": UNKNOWN_COUNTRY, "name": UNKNOWN_COUNTRY},
        ],
    }
    rows = format_table(result).splitlines()
    assert any(row.startswith("Germany (DE)  frankfurt") for row in rows), rows
    assert any(row.startswith("not located   ashburn") for row in rows), rows
    assert "??" not in format_table(result)
