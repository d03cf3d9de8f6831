"""The items of one top-level YAML list, one at a time.

``yaml.load`` builds the whole document's node graph before it makes any object: a
``units.yaml`` of 100,000 units (20 MB) took about 900 MB and 26 s that way. Here libyaml's
event parser feeds PyYAML's own composer and constructor one list item at a time, so only one
item's nodes exist at once (the same file: about 90 MB and 23 s, ``bench/README.md``).
"""

from __future__ import annotations

from collections.abc import Iterator

import yaml
from yaml import events
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

# libyaml's parser when PyYAML has it (about 5x faster than the pure-Python one)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class NotAList(Exception):
    """The document is not a mapping whose only key holds a list (read it whole instead)."""


class _ItemLoader(Composer, SafeConstructor, Resolver):
    """PyYAML's safe composer and constructor over a stream of parser events."""

    def __init__(self, stream: Iterator[events.Event]):
        self._stream, self._next = stream, None
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)

    def peek_event(self) -> events.Event:
        if self._next is None:
            self._next = next(self._stream)
        return self._next

    def check_event(self, *choices) -> bool:
        return not choices or isinstance(self.peek_event(), choices)

    def get_event(self) -> events.Event:
        event = self.peek_event()
        self._next = None
        return event

    def expect(self, kind: type[events.Event]) -> events.Event:
        if not self.check_event(kind):
            raise NotAList
        return self.get_event()

    def item(self) -> object:
        return self.construct_document(self.compose_node(None, None))


def list_items(text: str, key: str) -> Iterator[object]:
    """Each item of the list under ``key``, for a document that is exactly ``{key: [...]}``.

    Raises :class:`NotAList` (possibly after some items) for any other shape, and
    ``yaml.YAMLError`` for a syntax error."""
    loader = _ItemLoader(iter(yaml.parse(text, Loader=_LOADER)))
    for kind in (events.StreamStartEvent, events.DocumentStartEvent, events.MappingStartEvent):
        loader.expect(kind)
    if loader.check_event(events.MappingEndEvent) or loader.item() != key:
        raise NotAList
    loader.expect(events.SequenceStartEvent)
    while not loader.check_event(events.SequenceEndEvent):
        yield loader.item()
    loader.get_event()
    for kind in (events.MappingEndEvent, events.DocumentEndEvent, events.StreamEndEvent):
        loader.expect(kind)
