"""Which unit a code, a name or an address belongs to, and who may send for a unit: one
index per unit list, built once (at national scale a list holds ~590,000 units, so nothing
here walks the whole list per return or per message).

Used by the mailbox (who sent this), parsing (which unit a return is from), the notices (never
answer a stranger) and review (who may explain for a unit).
"""

from __future__ import annotations

from collections.abc import Sequence
from email.utils import parseaddr

from .config import Unit
from .labels import normalize_label
from .unit_list import UnitList

#: The longest address kept (the ledger's column); a longer one is no usable address at all.
MAX_ADDRESS = 320


class _Lookup:
    """key → the units listed under it (kept as positions in the list, made into units on get)."""

    __slots__ = ("_units", "_found")

    def __init__(self, units: UnitList):
        self._units, self._found = units, {}

    def add(self, key: str, position: int) -> None:
        self._found[key] = self._found.get(key, ()) + (position,)

    def get(self, key: str, default=()) -> list[Unit]:
        found = self._found.get(key)
        return default if found is None else [self._units[i] for i in found]

    def __contains__(self, key: str) -> bool:
        return key in self._found

    def keys(self):
        return self._found.keys()


class UnitIndex:
    """Lookups over one unit list: by code, by normalised name or alias, by contact or
    delegate address (all lower-cased)."""

    def __init__(self, units: Sequence[Unit]):
        self.source = units  # what the index was asked for (see unit_index)
        self.units = units = units if isinstance(units, UnitList) else UnitList.of(units)
        self._by_code = {c.lower(): i for i, c in enumerate(units.codes)}
        self.by_name, self.by_email = _Lookup(units), _Lookup(units)
        for i, u in enumerate(units.records()):
            for n in {normalize_label(x) for x in [u["name"], *u["aliases"]]} - {""}:
                self.by_name.add(n, i)
            for e in {c["email"].lower() for c in u["contacts"]} | {d.strip().lower() for d in u["delegates"]}:
                self.by_email.add(e, i)
        self.longest_name = max((len(n) for n in self.by_name.keys()), default=0)
        self.longest_code = max((len(c) for c in self._by_code), default=0)

    def unit_of_code(self, code: str) -> Unit | None:
        """The unit whose code is ``code`` in any case."""
        i = self._by_code.get(code.lower())
        return None if i is None else self.units[i]


_INDEXES: dict[int, UnitIndex] = {}


def unit_index(units: Sequence[Unit]) -> UnitIndex:
    """The index of this very list (configs keep one list per campaign; another sequence of
    units is indexed as a :class:`UnitList` of them)."""
    found = _INDEXES.get(id(units))
    if found is None or found.source is not units:
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


def units_of_sender(sender: str | None, units: Sequence[Unit]) -> list[Unit]:
    """Every unit that lists ``sender`` among its contacts or delegates."""
    address = bare_address(sender)
    return list({u.code: u for u in unit_index(units).by_email.get(address, [])}.values()) if address else []


def sender_unit(sender: str | None, units: Sequence[Unit]) -> Unit | None:
    """The one unit whose contacts or delegates include ``sender`` (case-insensitive); None for
    a stranger, and for an address several units list (then use :func:`sender_allowed`)."""
    found = units_of_sender(sender, units)
    return found[0] if len(found) == 1 else None
