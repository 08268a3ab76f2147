"""Forgiving, unambiguous name resolution shared by the hardware catalogs (GPUs in catalog.py, CPUs and boards in
platforms.py).

A query resolves when exactly one catalog item contains all its words. Words are letters and digits split apart
('RTX 5060 Ti 16GB' -> rtx 5060 ti 16 gb). Noise words never tell items apart and are dropped; optional words (brand
words, a memory size) may be left out without making a name ambiguous. Several matches -> an error listing them;
none -> an error naming the closest names.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from gpumix.errors import GpumixError

_TOKEN_RE = re.compile(r"[a-z]+|\d+")
MAX_SUGGESTIONS = 6


class Named(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def aliases(self) -> tuple[str, ...]: ...


T = TypeVar("T", bound=Named)


def memory_size_optional(tokens: list[str]) -> set[int]:
    """A memory size ('12', 'gb') may be left out: '3060' still means 'RTX 3060 12GB' when it is the only 3060."""
    optional: set[int] = set()
    for i in range(len(tokens) - 1):
        if tokens[i].isdigit() and tokens[i + 1] == "gb":
            optional |= {i, i + 1}
    return optional


@dataclass(frozen=True)
class NameRules:
    """How one catalog's names are matched, and what its errors say."""

    what: str  # "GPU", "CPU", "board": used in error messages
    list_hint: str  # e.g. "`gpumix gpus` lists the catalog"
    noise: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    # Extra positions (in a name's tokens) that may be left out, beyond the `optional` words.
    optional_positions: Callable[[list[str]], set[int]] = memory_size_optional
    unknown_hint: str | None = None  # hint for an unknown name (default: list_hint)

    def tokens(self, text: str) -> list[str]:
        return [t for t in _TOKEN_RE.findall(text.lower()) if t not in self.noise]

    def key(self, text: str) -> str:
        return "".join(self.tokens(text))

    def significant_extras(self, query: Counter[str], name_tokens: list[str]) -> int | None:
        """None if the query is not contained in the name; else how many distinguishing words it left out."""
        if query - Counter(name_tokens):
            return None
        unmatched = query.copy()
        significant = 0
        optional = {i for i, tok in enumerate(name_tokens) if tok in self.optional} | self.optional_positions(name_tokens)
        for i, tok in enumerate(name_tokens):
            if unmatched[tok] > 0:
                unmatched[tok] -= 1
            elif i not in optional:
                significant += 1
        return significant


@dataclass(frozen=True)
class NameIndex(Generic[T]):
    """Items plus an index from normalised names/aliases/ids to ids."""

    items: tuple[T, ...]
    rules: NameRules

    @functools.cached_property
    def by_id(self) -> dict[str, T]:
        return {item.id: item for item in self.items}

    @functools.cached_property
    def _names(self) -> list[tuple[str, list[str]]]:
        """(id, tokens) for every way an item is written: display name, id and aliases."""
        return [(it.id, self.rules.tokens(label)) for it in self.items for label in (it.name, it.id, *it.aliases)]

    @functools.cached_property
    def _exact(self) -> dict[str, set[str]]:
        index: dict[str, set[str]] = {}
        for item_id, toks in self._names:
            index.setdefault("".join(toks), set()).add(item_id)
        return index

    def candidates(self, query: str) -> list[T]:
        """Items the query could mean, best first; one element when the name is unambiguous."""
        key = self.rules.key(query)
        if not key:
            return []
        exact = self._exact.get(key)
        if exact:
            return [self.by_id[i] for i in sorted(exact)]
        wanted = Counter(self.rules.tokens(query))
        best: dict[str, int] = {}
        for item_id, toks in self._names:
            extras = self.rules.significant_extras(wanted, toks)
            if extras is not None:
                best[item_id] = min(extras, best.get(item_id, extras))
        perfect = [i for i, extras in best.items() if extras == 0]
        if len(perfect) == 1:
            return [self.by_id[perfect[0]]]
        return [self.by_id[i] for i in sorted(best, key=lambda i: (best[i], i))]

    def suggestions(self, query: str) -> list[str]:
        close = difflib.get_close_matches(self.rules.key(query), list(self._exact), n=MAX_SUGGESTIONS * 2, cutoff=0.5)
        names: list[str] = []
        for key in close:
            for item_id in sorted(self._exact[key]):
                name = self.by_id[item_id].name
                if name not in names:
                    names.append(name)
        return names[:MAX_SUGGESTIONS]

    def resolve(self, query: str) -> T:
        what = self.rules.what
        if not self.rules.key(query):
            raise GpumixError(f"empty {what} name {query!r}", hint=self.rules.list_hint)
        found = self.candidates(query)
        if len(found) == 1:
            return found[0]
        if found:
            listed = ", ".join(repr(item.name) for item in found[:10])
            raise GpumixError(f"{what} name {query!r} is ambiguous: it matches {listed}",
                              hint=f"write the full name ({self.rules.list_hint})")  # fmt: skip
        close = self.suggestions(query)
        raise GpumixError(
            f"unknown {what} {query!r}" + (f"; closest: {', '.join(repr(n) for n in close)}" if close else ""),
            hint=self.rules.unknown_hint or self.rules.list_hint,
        )


def name_index(items: Sequence[T], rules: NameRules) -> NameIndex[T]:
    return NameIndex(items=tuple(items), rules=rules)
