"""Which unit a code, a name or an address belongs to, and who may send for a unit: one
index per unit list, built once (at national scale a list holds ~590,000 units, so nothing
here walks the whole list per return or per message).

Used by the mailbox (who sent this), parsing (which unit a return is from), the notices (never
answer a stranger) and review (who may explain for a unit).
"""

from __future__ import annotations

from email.utils import parseaddr

from .config import Unit
from .labels import normalize_label

#: The longest address kept (the ledger's column); a longer one is no usable address at all.
MAX_ADDRESS = 320


class UnitIndex:
    """Lookups over one unit list: by code, by normalised name or alias, by contact or
    delegate address (all lower-cased)."""

    def __init__(self, units: list[Unit]):
        self.units = units
        self.by_code = {u.code.lower(): u for u in units}
        self.by_name: dict[str, list[Unit]] = {}
        self.by_email: dict[str, list[Unit]] = {}
        for u in units:
            for n in {normalize_label(x) for x in [u.name, *u.aliases]} - {""}:
                self.by_name.setdefault(n, []).append(u)
            for e in {c.email.lower() for c in u.contacts} | {d.strip().lower() for d in u.delegates}:
                self.by_email.setdefault(e, []).append(u)
        self.longest_name = max((len(n) for n in self.by_name), default=0)
        self.longest_code = max((len(c) for c in self.by_code), default=0)


_INDEXES: dict[int, UnitIndex] = {}


def unit_index(units: list[Unit]) -> UnitIndex:
    """The index of this very list (configs keep one list per campaign)."""
    found = _INDEXES.get(id(units))
    if found is None or found.units is not units:
        if len(_INDEXES) > 16:
            _INDEXES.clear()
        found = _INDEXES[id(units)] = UnitIndex(units)
    return found


def bare_address(sender: str | None) -> str:
    """The bare address of a From header, lower-cased; '' when there is none or it is too long
    to be real (such a message is then taken in as from an unknown sender, never answered)."""
    address = (parseaddr(sender or "")[1] or (sender or "")).strip().lower()
    return address if len(address) <= MAX_ADDRESS else ""


def sender_allowed(sender: str | None, unit: Unit) -> bool:
    """Whether ``sender`` (an address or ``Name <address>``) is a contact or delegate of ``unit``."""
    address = bare_address(sender)
    return bool(address) and address in ({c.email.lower() for c in unit.contacts}
                                         | {d.strip().lower() for d in unit.delegates})


def units_of_sender(sender: str | None, units: list[Unit]) -> list[Unit]:
    """Every unit that lists ``sender`` among its contacts or delegates."""
    address = bare_address(sender)
    return list({u.code: u for u in unit_index(units).by_email.get(address, [])}.values()) if address else []


def sender_unit(sender: str | None, units: list[Unit]) -> Unit | None:
    """The one unit whose contacts or delegates include ``sender`` (case-insensitive); None for
    a stranger, and for an address several units list (then use :func:`sender_allowed`)."""
    found = units_of_sender(sender, units)
    return found[0] if len(found) == 1 else None
