"""Tag rules a booru curator applies (``tag.aliases``, ``tag.implications``, ``tag.replace``, ``tag.exclude``,
``tag.drop_implied``), shaped after Danbooru's own. A pure module: lists of tags in, lists of tags out.

- aliases (Danbooru's ``tag_aliases``; hydrus calls them siblings): the antecedent is an old or wrong spelling,
  the consequent the canonical tag. They chain: a -> b and b -> c rewrite a to c. A tag aliased two ways or a
  cycle is a ConfigError before anything is applied, since either would make the spelling depend on row order.
  A self-alias (a -> a) says nothing and is skipped.
- implications (``tag_implications``; hydrus: parents): the antecedent implies the consequent, child implies
  parent (witch_hat -> hat, fate/grand_order -> fate_(series)), transitively. Both sides go through the aliases
  first, so a rule written with an old spelling still applies; a cycle (after aliasing) is a ConfigError.
  With ``drop_implied`` a tag implied by another tag of the same list is dropped: the child says it already
  (witch_hat stays, hat goes), so a caption spends no tokens on it.
- replace: exact names -> the user's name, as kohya's ``--tag_replacement``; the value is not aliased again
  (it is the user's choice); a value "" drops the tag (counted as excluded).
- exclude: names and ``fnmatch`` wildcards, as kohya's ``--undesired_tags``: ``*`` any run, ``?`` one character,
  ``[...]`` a character set (so ``[?]`` is a literal question mark, itself a Danbooru tag). Matched after
  aliasing and replacing.

The names in tag.replace and tag.exclude are canonical spellings (after tag.aliases). An old spelling given as a
replace key or an exclude name (not a wildcard) is put through the aliases too, so it still matches.

Order per list: aliases -> replace -> exclude -> duplicates merged (the first occurrence kept) -> drop_implied.
The list's order is kept otherwise. Each rule counts what it did itself (``RuleCounts``): an instance aliased
and then excluded counts once in each.

Rule tables are Danbooru's exports as Parquet or CSV: ``antecedent_name``, ``consequent_name``, ``status``;
only active rows apply (deleted, retired, pending, ... do not), any other column is ignored.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, cast

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from zxl.config import ConfigError

ANTECEDENT, CONSEQUENT, STATUS = "antecedent_name", "consequent_name", "status"
SUFFIXES = (".parquet", ".csv", ".csv.gz")
_NOTHING: frozenset[str] = frozenset()


def read_rule_table(path: str, key: str) -> list[tuple[str, str]]:
    """The (antecedent, consequent) pairs of the active rows of a Danbooru-shaped rule table, names stripped.

    ``path`` is .parquet, .csv or .csv.gz. Only ``status`` == active (any case, stripped) applies; a table
    without a ``status`` column has every row active. Rows with an empty name are skipped. Any problem with
    the file is a ConfigError naming ``key`` and the path.
    """
    where = f"{key}: {path}"
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: no such file")
    if not path.lower().endswith(SUFFIXES):
        raise ConfigError(f"{where}: a rule table is {', '.join(SUFFIXES)}")
    try:
        table = _read_parquet(path, key) if path.lower().endswith(".parquet") else _read_csv(path, key)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"{where}: cannot read it ({exc})") from exc
    antecedents = table.column(ANTECEDENT).to_pylist()
    consequents = table.column(CONSEQUENT).to_pylist()
    has_status = STATUS in table.column_names
    statuses = table.column(STATUS).to_pylist() if has_status else [None] * table.num_rows
    pairs = []
    for antecedent, consequent, status in zip(antecedents, consequents, statuses, strict=True):
        if has_status and (status is None or str(status).strip().lower() != "active"):
            continue
        a, c = _name(antecedent), _name(consequent)
        if a and c:
            pairs.append((a, c))
    return pairs


def _name(value) -> str:
    return "" if value is None else str(value).strip()


def _check_columns(names: list[str], path: str, key: str) -> list[str]:
    missing = [c for c in (ANTECEDENT, CONSEQUENT) if c not in names]
    if missing:
        raise ConfigError(f"{key}: {path}: no column {', '.join(missing)}; it has {', '.join(names) or 'none'}")
    return [c for c in (ANTECEDENT, CONSEQUENT, STATUS) if c in names]


def _read_parquet(path: str, key: str) -> pa.Table:
    columns = _check_columns(pq.read_schema(path).names, path, key)
    return pq.read_table(path, columns=columns)


def _read_csv(path: str, key: str) -> pa.Table:
    # Danbooru's reason column holds quoted text with line breaks; pyarrow decompresses .gz by the suffix.
    parse = pacsv.ParseOptions(newlines_in_values=True)
    with pacsv.open_csv(path, parse_options=parse) as reader:  # the header, from the first block only
        columns = _check_columns(reader.schema.names, path, key)
    # as text: a tag named "nan" or "null" is a name, not a missing value, nor a number
    convert = pacsv.ConvertOptions(include_columns=columns, column_types=dict.fromkeys(columns, pa.string()))
    return pacsv.read_csv(path, parse_options=parse, convert_options=convert)


def _same(tag: str) -> str:
    return tag


class Aliases:
    """Old spelling -> canonical tag, transitively. ``mapping`` holds every antecedent -> its final tag."""

    def __init__(self, pairs: Iterable[tuple[str, str]], key: str = "tag.aliases"):
        self.key = key
        direct: dict[str, str] = {}
        for antecedent, consequent in pairs:
            a, c = antecedent.strip(), consequent.strip()
            if not a or not c or a == c:
                continue
            seen = direct.setdefault(a, c)
            if seen != c:
                raise ConfigError(f"{key}: {a!r} is aliased two ways: {a!r} -> {seen!r} and {a!r} -> {c!r}")
        self.mapping: dict[str, str] = _follow_chains(direct, key)

    def __call__(self, tag: str) -> str:
        return self.mapping.get(tag, tag)


def _follow_chains(direct: dict[str, str], key: str) -> dict[str, str]:
    """Each antecedent -> the end of its chain; a chain that comes back to itself is a ConfigError."""
    final: dict[str, str] = {}
    for start in direct:
        if start in final:
            continue
        path, on_path, tag = [start], {start}, direct[start]
        while tag in direct and tag not in final:
            if tag in on_path:
                raise ConfigError(f"{key}: a cycle: {' -> '.join([*path[path.index(tag) :], tag])}")
            path.append(tag)
            on_path.add(tag)
            tag = direct[tag]
        end = final.get(tag, tag)
        for t in path:
            final[t] = end
    return final


class Implications:
    """Child -> every parent, transitively, over canonical (aliased) names; closures computed once, up front."""

    def __init__(self, pairs: Iterable[tuple[str, str]], aliases: Aliases | None = None, key: str = "tag.implications"):
        self.key = key
        self._alias: Callable[[str], str] = aliases if aliases is not None else _same
        parents: dict[str, dict[str, None]] = {}  # dicts, not sets: a cycle is reported the same way every run
        written: dict[tuple[str, str], tuple[str, str]] = {}  # the rule as the table spells it
        for antecedent, consequent in pairs:
            a, c = antecedent.strip(), consequent.strip()
            if not a or not c:
                continue
            child, parent = self._alias(a), self._alias(c)
            if child == parent:  # a -> a, or made so by the aliases: implies nothing
                continue
            parents.setdefault(child, {})[parent] = None
            written.setdefault((child, parent), (a, c))
        # every tag with at least one parent -> all the tags it implies
        self.closure: dict[str, frozenset[str]] = _close(parents, written, key)

    def implied_by(self, tag: str) -> frozenset[str]:
        """Every tag ``tag`` implies, transitively, not itself (an old spelling is aliased first)."""
        return self.closure.get(self._alias(tag), _NOTHING)


def _close(
    parents: dict[str, dict[str, None]], written: dict[tuple[str, str], tuple[str, str]], key: str
) -> dict[str, frozenset[str]]:
    """Depth-first, iteratively (no chain is too deep for it): a tag's closure is its parents and theirs, built
    once its parents are done; a parent still on the path closes a cycle."""
    closure: dict[str, frozenset[str]] = {}
    for root in parents:
        if root in closure:
            continue
        stack = [(root, iter(parents[root]))]
        path, on_path = [root], {root}
        while stack:
            tag, todo = stack[-1]
            for parent in todo:
                if parent in closure or parent not in parents:
                    continue
                if parent in on_path:
                    raise _cycle([*path[path.index(parent) :], parent], written, key)
                stack.append((parent, iter(parents[parent])))
                path.append(parent)
                on_path.add(parent)
                break
            else:
                stack.pop()
                path.pop()
                on_path.discard(tag)
                implied = set(parents[tag])
                for parent in parents[tag]:
                    implied.update(closure.get(parent, _NOTHING))
                closure[tag] = frozenset(implied)
    return closure


def _cycle(cycle: list[str], written: dict[tuple[str, str], tuple[str, str]], key: str) -> ConfigError:
    message = f"{key}: a cycle: {' -> '.join(cycle)}"
    edges = list(zip(cycle, cycle[1:], strict=False))
    rows = [written[edge] for edge in edges]
    if rows != edges:  # an alias made the cycle: name the rules as the table writes them
        message += f" (after tag.aliases; the rows: {', '.join(f'{a} -> {c}' for a, c in rows)})"
    return ConfigError(message)


@dataclasses.dataclass
class RuleCounts:
    """What applying the rules did, in tag instances (occurrences over rows)."""

    aliased: int = 0  # rewritten to another spelling by an alias
    replaced: int = 0  # renamed by tag.replace
    excluded: int = 0  # dropped by tag.exclude, or by a tag.replace value ""
    implied: int = 0  # dropped by tag.drop_implied: another tag of the row implies it
    merged: int = 0  # dropped because the row already had that tag after rewriting

    def add(self, other: RuleCounts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class RuleSettings(Protocol):
    """The ``tag.*`` settings the rules read (TagConfig)."""

    aliases: str  # a rule table's path, "" for none
    implications: str
    exclude: list[str]
    replace: dict[str, str]
    drop_implied: bool


class TagRules:
    """Aliases, replace, exclude, duplicates, drop_implied, in that order (module docstring)."""

    def __init__(
        self,
        aliases: Aliases | None = None,
        implications: Implications | None = None,
        exclude: Iterable[str] = (),
        replace: dict[str, str] | None = None,
        drop_implied: bool = False,
    ):
        if drop_implied and implications is None:
            raise ConfigError("tag.drop_implied: needs a tag.implications table (it says which tag implies which)")
        self.aliases = aliases
        self.implications = implications
        self.drop_implied = drop_implied
        alias = aliases if aliases is not None else _same
        self.replace = _replace_table(replace or {}, alias)
        self._exclude, self._pattern = _exclude_matchers(exclude, alias)
        self._names = _Names(self._resolve)  # tag -> its name after the rules, None if dropped
        self._changed: dict[str, tuple[bool, bool, bool]] = {}  # tag -> aliased, replaced, excluded (any of them)
        self._dropped: set[str] = set()
        self._parents_cache: frozenset[str] | None = None

    @classmethod
    def from_config(cls, cfg: RuleSettings) -> TagRules:
        """The rules of the ``tag.*`` settings; a path "" means no table."""
        aliases_path, implications_path = cfg.aliases.strip(), cfg.implications.strip()
        aliases = Aliases(read_rule_table(aliases_path, "tag.aliases")) if aliases_path else None
        implications = None
        if implications_path:  # written in any spelling: the aliases apply to the implications first
            implications = Implications(read_rule_table(implications_path, "tag.implications"), aliases)
        return cls(aliases, implications, cfg.exclude, cfg.replace, cfg.drop_implied)

    @property
    def active(self) -> bool:
        """False when no rule would change anything: then ``apply`` returns a copy of the list."""
        return bool(
            (self.aliases is not None and self.aliases.mapping)
            or self.replace
            or self._exclude
            or self._pattern is not None
            or (self.drop_implied and self.implications is not None and self.implications.closure)
        )

    def apply(self, tags: list[str] | None, counts: RuleCounts | None = None) -> list[str] | None:
        """One list through the rules (None stays None); what they did is added to ``counts``."""
        out, done = self.apply_many([tags])
        if counts is not None:
            counts.add(done)
        return out[0]

    def apply_many(self, lists: Sequence[list[str] | None]) -> tuple[list[list[str] | None], RuleCounts]:
        """Many lists through the rules. Each distinct tag is resolved once (and kept for later calls); per row
        the work is lookups and set tests in C, with Python loops only for rows a rule changes."""
        counts = RuleCounts()
        if not self.active:
            return [None if tags is None else list(tags) for tags in lists], counts
        lookup, changed, dropped = self._names.__getitem__, self._changed, self._dropped
        touched: Counter[str] = Counter()  # instances of tags a rule rewrote or dropped
        closure = self.implications.closure if self.drop_implied and self.implications is not None else {}
        parents = self._parents() if closure else _NOTHING
        out: list[list[str] | None] = []
        for tags in lists:
            if tags is None:
                out.append(None)
                continue
            mapped = list(map(lookup, tags))  # resolves a tag on first sight: changed and dropped grow here
            if changed and not changed.keys().isdisjoint(tags):
                touched.update([t for t in tags if t in changed])
            if dropped and not dropped.isdisjoint(tags):
                row = [t for t in mapped if t is not None]
            else:
                row = cast(list[str], mapped)
            present = set(row)
            if len(present) != len(row):
                unique = list(dict.fromkeys(row))
                counts.merged += len(row) - len(unique)
                row = unique
            # only a row with a tag that something implies and a tag that implies something can lose one
            if closure and not parents.isdisjoint(present):
                implying = closure.keys() & present
                if implying:
                    implied = present.intersection(set().union(*[closure[t] for t in implying]))
                    if implied:
                        kept = [t for t in row if t not in implied]
                        counts.implied += len(row) - len(kept)
                        row = kept
            out.append(row)
        for tag, n in touched.items():
            aliased, replaced, excluded = changed[tag]
            counts.aliased += n * aliased
            counts.replaced += n * replaced
            counts.excluded += n * excluded
        return out, counts

    def _parents(self) -> frozenset[str]:
        """Every tag that some tag implies, built once."""
        if self._parents_cache is None:
            closure = self.implications.closure if self.implications is not None else {}
            self._parents_cache = _NOTHING.union(*closure.values())
        return self._parents_cache

    def _resolve(self, tag: str) -> str | None:
        """The tag's name after alias, replace and exclude (None: dropped); what they did goes to _changed."""
        name = self.aliases(tag) if self.aliases is not None else tag
        aliased = name != tag
        replacement = self.replace.get(name)
        if replacement == "":
            name, replaced, excluded = None, False, True
        else:
            replaced = replacement is not None and replacement != name
            name = replacement if replacement is not None else name
            excluded = name in self._exclude or (self._pattern is not None and self._pattern.match(name) is not None)
        if aliased or replaced or excluded:
            self._changed[tag] = (aliased, replaced, excluded)
        if excluded:
            self._dropped.add(tag)
            return None
        return name


class _Names(dict[str, "str | None"]):
    """tag -> its name after the rules: a dict lookup in C, the rules run once per tag, on first sight."""

    def __init__(self, resolve: Callable[[str], str | None]):
        super().__init__()
        self.resolve = resolve

    def __missing__(self, tag: str) -> str | None:
        name = self[tag] = self.resolve(tag)
        return name


def _replace_table(replace: dict[str, str], alias: Callable[[str], str]) -> dict[str, str]:
    """Canonical name -> replacement; an old-spelling key is aliased, and two keys that alias to one tag must
    agree on its replacement."""
    table: dict[str, str] = {}
    written: dict[str, str] = {}
    for key, value in replace.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"tag.replace: maps tag names to tag names, got {key!r}: {value!r}")
        name = key.strip()
        if not name:
            raise ConfigError(f"tag.replace: an empty tag name (-> {value!r})")
        canonical = alias(name)
        if canonical in table and table[canonical] != value.strip():
            raise ConfigError(
                f"tag.replace: {written[canonical]!r} and {name!r} are the same tag after tag.aliases "
                f"({canonical!r}) but are replaced differently: {table[canonical]!r} and {value.strip()!r}"
            )
        table[canonical], written[canonical] = value.strip(), name
    return table


def _exclude_matchers(exclude: Iterable[str], alias: Callable[[str], str]) -> tuple[set[str], re.Pattern | None]:
    """Exact names (and their aliased spellings) as a set; the wildcards as one regular expression."""
    if isinstance(exclude, str):
        raise ConfigError(f"tag.exclude: a list of tag names or patterns, not the string {exclude!r}")
    names: set[str] = set()
    patterns: list[str] = []
    for pattern in exclude:
        if not isinstance(pattern, str) or not pattern.strip():
            raise ConfigError(f"tag.exclude: {pattern!r} is not a tag name or pattern")
        pattern = pattern.strip()
        if any(ch in pattern for ch in "*?["):
            patterns.append(pattern)
        else:  # the name as written too: a tag.replace value is not aliased, and may be an old spelling
            names.update((pattern, alias(pattern)))
    joined = "|".join(fnmatch.translate(p) for p in patterns)  # fnmatch.fnmatchcase, all patterns at once
    return names, re.compile(joined) if patterns else None


def rare_tags(lists: Sequence[list[str] | None], trainable: Sequence[bool], min_count: int) -> set[str]:
    """Tags of trainable rows carried by fewer than ``min_count`` of them (a row counts once per tag).

    Only trainable rows are counted, and only their tags can be rare: a tag seen only in rows that are not
    trained on is left alone. ``min_count`` <= 1 turns the rule off.
    """
    if len(lists) != len(trainable):
        raise ValueError(f"{len(lists)} tag lists but {len(trainable)} trainable flags")
    if min_count <= 1:
        return set()
    carried: Counter[str] = Counter()
    for tags, train in zip(lists, trainable, strict=True):
        if train and tags is not None:
            carried.update(set(tags))
    return {tag for tag, n in carried.items() if n < min_count}


def drop_tags(lists: Sequence[list[str] | None], drop: set[str]) -> tuple[list[list[str] | None], int]:
    """The lists without the tags in ``drop`` (None stays None), and how many tag instances went."""
    out: list[list[str] | None] = []
    dropped = 0
    for tags in lists:
        if tags is None or not drop or drop.isdisjoint(tags):
            out.append(None if tags is None else list(tags))
            continue
        kept = [t for t in tags if t not in drop]
        dropped += len(tags) - len(kept)
        out.append(kept)
    return out, dropped
