"""A campaign's units kept compact: each unit as its validated JSON, made into a ``Unit`` when
asked for.

At 100,000 units the roster held as pydantic objects took about 400 MB, and every process
forked from it (the parsing workers) copied the pages it touched. Here a unit costs its JSON
text (about 300 bytes) plus its code, name and kind as columns, which is what most walks over
the roster need (``codes``, ``name_of``, ``kind_of``). A walk that needs whole units
(``for unit in units``) makes them one at a time (about 27 µs each) and drops them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from .config import Unit


def _unit_model():
    from .config import Unit  # the model lives with the rest of the configuration
    return Unit


class UnitList(Sequence["Unit"]):
    """An immutable sequence of units, in roster order, indexed by code."""

    __slots__ = ("_rows", "codes", "names", "kinds", "_position", "_by_code")

    def __init__(self, rows: Iterable[bytes]):
        """``rows``: each unit's JSON as :meth:`row` writes it (already validated)."""
        self._rows = tuple(rows)
        columns = [(c["code"], c["name"], c["kind"]) for c in map(json.loads, self._rows)]
        self.codes: tuple[str, ...]
        self.names: tuple[str, ...]
        self.kinds: tuple[str, ...]
        self.codes, self.names, self.kinds = (tuple(col) for col in zip(*columns)) if columns else ((), (), ())
        self._position = {code: i for i, code in enumerate(self.codes)}
        self._by_code: UnitsByCode | None = None

    @staticmethod
    def row(unit: Unit) -> bytes:
        """A unit as the list keeps it."""
        return unit.__pydantic_serializer__.to_json(unit)

    @classmethod
    def of(cls, units: Iterable[Unit]) -> UnitList:
        """A list made from Unit objects (a test's roster, a changed copy)."""
        return cls(cls.row(u) for u in units)

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, i: int) -> Unit: ...
    @overload
    def __getitem__(self, i: slice) -> UnitList: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return UnitList(self._rows[i])
        return _unit_model().model_validate_json(self._rows[i])

    def __iter__(self) -> Iterator[Unit]:
        model = _unit_model()
        for row in self._rows:
            yield model.model_validate_json(row)

    def records(self) -> Iterator[dict]:
        """Each unit as plain data, for a walk that only reads (a third of the cost of a Unit)."""
        return (json.loads(r) for r in self._rows)

    def __contains__(self, unit: object) -> bool:
        code = getattr(unit, "code", None)
        return code in self._position and self[self._position[code]] == unit

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnitList) and self._rows == other._rows

    def __hash__(self) -> int:
        return hash(self._rows)

    def __repr__(self) -> str:
        return f"UnitList({len(self)} units)"

    def __reduce__(self):
        return UnitList, (self._rows,)

    # ------------------------------------------------------------ by code
    def position(self, code: str) -> int | None:
        return self._position.get(code)

    def get(self, code: str) -> Unit | None:
        i = self._position.get(code)
        return None if i is None else self[i]

    def name_of(self, code: str) -> str:
        return self.names[self._position[code]]

    def kind_of(self, code: str) -> str:
        return self.kinds[self._position[code]]

    def subset(self, codes: Iterable[str]) -> UnitList:
        """These units, in the order given (every code must be in the list)."""
        return UnitList([self._rows[self._position[c]] for c in codes])

    @property
    def by_code(self) -> UnitsByCode:
        if self._by_code is None:
            self._by_code = UnitsByCode(self)
        return self._by_code


class UnitsByCode(Mapping[str, "Unit"]):
    """code → Unit over a :class:`UnitList` (membership and ``len`` without making units)."""

    __slots__ = ("_units",)

    def __init__(self, units: UnitList):
        self._units = units

    def __getitem__(self, code: str) -> Unit:
        i = self._units.position(code)
        if i is None:
            raise KeyError(code)
        return self._units[i]

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and self._units.position(code) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._units.codes)

    def __len__(self) -> int:
        return len(self._units)
