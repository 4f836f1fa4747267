"""Step arguments' canonical JSON, digest and compacted form, computed per step in proportion
to what changed since the workflow's previous step.

An agent loop resends its whole, growing conversation at every LLM step. Encoding each
request from scratch (its canonical JSON, then parsing that again to compact it, hashing
every prefix of the conversation, and hashing the whole text for ``args_digest``) costs the
coordinator time proportional to the conversation at every step, so a loop's steps get
slower as it runs. :class:`ArgsEncoder` (one per workflow run, kept with it in the workflow
cache) remembers, for each list the compaction stores as a prefix chain
(:mod:`conveyor.coordinator.store.payloads`), every element's canonical text, the digest of
every prefix, and a running hash of the last few prefixes; the next request reuses them for
the leading elements that are still exactly the same and encodes only the rest.

"Exactly the same" is decided by :mod:`marshal` (format 2, which has no back-references, so
a list's serialisation is its elements' serialisations one after another): it serialises only
exact built-in types, tells ``1``, ``1.0``, ``True`` and ``-0.0`` apart, and runs no user code,
so equal bytes mean values with the same canonical text. Python's ``==`` would not do: it
equates ``1`` with ``1.0`` and ``True`` (different JSON), and a subclass's ``__eq__`` may say
anything. Elements are compared, not tracked by identity, because workflow code mutates them
(Anthropic's prompt-cache marker moves on to the newest message at every turn).

The result is byte-for-byte what the from-scratch path gives: the same canonical text as
:func:`conveyor.coordinator.model.canonical_json`, the same digest, the same compacted rows
(``tests/test_args_encoding.py`` checks this on random edit sequences). Whatever the
incremental path does not handle exactly (a tuple, a ``dict`` subclass or a non-string key
above the lists, a value JSON cannot carry) is encoded from scratch, which also raises the
usual errors for invalid values.
"""

from __future__ import annotations

import base64
import hashlib
import json
import marshal
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from .model import canonical_digest, canonical_json

#: Shorter arguments are stored plain, as are parts shorter than these: a reference costs
#: ~60 characters plus a row. Values outside lists (a system prompt, tool definitions) are
#: resent whole at every step, so they become parts from a lower size than list elements,
#: which their list's chain stores once anyway (they become parts of their own only so that
#: a trimmed or edited history still shares them).
MIN_ARGS_CHARS = 256
MIN_SHARED_CHARS = 128
MIN_PART_CHARS = 1024
#: Nesting levels below the arguments' top that may become parts; deeper values stay inline,
#: so a deeply nested value cannot turn into one row per level.
MAX_DEPTH = 6

#: How compacted text spells a reference's start; canonical JSON never contains it.
MARKER = '{ "$'

#: Memoised calls per workflow run (distinct step kinds and names): a workflow that keeps
#: several conversations reuses each; beyond this the least recently used is forgotten.
MAX_MEMOISED_CALLS = 16
#: Running hashes kept per list, for its last prefixes: a step that changes only its last
#: few elements (a moved cache marker) continues from one; further back is hashed again.
KEPT_STATES = 4

#: marshal's format without back-references: a list serialises as its header and then each
#: element's serialisation on its own, independent of the others.
_MARSHAL_VERSION = 2
#: ``[`` and a 4-byte element count.
_LIST_HEADER = 5


#: canonical_json's encoder, built once: json.dumps builds one per call, which is most of
#: its cost on the small values (messages) a long history is made of. Callers check the
#: result for lone surrogates themselves, or encode values parsed from canonical text.
canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Digests(Sequence[str]):
    """Prefix digests, spelled (base64) only when looked at: most are only hashed."""

    def __init__(self, raw: list[bytes]) -> None:
        self._raw = raw

    def __len__(self) -> int:
        return len(self._raw)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [b64(raw) for raw in self._raw[index]]
        return b64(self._raw[index])


class _ParsedElements(Sequence[Any]):
    """A list's elements, parsed from their canonical texts only when needed (the few new
    ones a step stores): the values the from-scratch path gets by parsing the whole text."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts

    def __len__(self) -> int:
        return len(self._texts)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [json.loads(text) for text in self._texts[index]]
        return json.loads(self._texts[index])

    def __iter__(self) -> Iterator[Any]:
        return (json.loads(text) for text in self._texts)


@dataclass
class Chain:
    """A list to store as a prefix chain: its elements and the digest of each prefix."""

    elements: Sequence[Any]
    prefixes: Digests
    depth: int

    def stored_run(self, start: int, end: int, blobs_found: dict[str, str]) -> str:
        """The stored text of elements ``start`` to ``end``, their parts added to ``blobs_found``.

        Only new elements are encoded part by part; the prefix a stored row already holds is
        only hashed, so a step costs little more than its new messages."""
        texts = []
        for element in self.elements[start:end]:
            found: dict[str, str] = {}
            plain, stored = _encode(element, self.depth + 1, True, Compacted(""), found)
            text = canonical(element)
            if plain == text:
                texts.append(stored)
                blobs_found.update(found)
            else:  # spelled differently from canonical JSON: kept whole, which is always exact
                texts.append(text)
        return ",".join(texts)


@dataclass
class Compacted:
    """One step's arguments, compacted, with the parts they need (before knowing which exist)."""

    stored: str
    blobs: dict[str, str] = field(default_factory=dict)
    chains: list[Chain] = field(default_factory=list)


def _reference(kind: str, digest: str) -> str:
    return f'{{ "${kind}": "{digest}" }}'


def _blob(plain: str, stored: str, depth: int, in_list: bool, found: dict[str, str]) -> str:
    if depth == 0 or len(stored) < (MIN_PART_CHARS if in_list else MIN_SHARED_CHARS):
        return stored
    digest = canonical_digest(plain)
    found[digest] = stored
    return _reference("blob", digest)


def _encode(value: Any, depth: int, in_list: bool, out: Compacted, found: dict[str, str]) -> tuple[str, str]:
    """(canonical text, stored text) of ``value``; the parts it needs go into ``found`` / ``out``."""
    if isinstance(value, str):
        plain = canonical(value)
        return plain, _blob(plain, plain, depth, in_list, found)
    if not isinstance(value, dict | list):
        plain = canonical(value)  # a number, true, false or null
        return plain, plain
    if depth >= MAX_DEPTH:
        plain = canonical(value)
        return plain, _blob(plain, plain, depth, in_list, found)
    if isinstance(value, dict):
        plain_items: list[str] = []
        stored_items: list[str] = []
        for key in sorted(value):
            name = canonical(key) + ":"
            plain, stored = _encode(value[key], depth + 1, in_list, out, found)
            plain_items.append(name + plain)
            stored_items.append(name + stored)
        plain = "{" + ",".join(plain_items) + "}"
        return plain, _blob(plain, "{" + ",".join(stored_items) + "}", depth, in_list, found)
    if in_list:  # inside a chain's element: a plain array, a blob when long
        pairs = [_encode(element, depth + 1, True, out, found) for element in value]
        plain = "[" + ",".join(p for p, _ in pairs) + "]"
        return plain, _blob(plain, "[" + ",".join(s for _, s in pairs) + "]", depth, True, found)
    return _encode_chain(value, depth, out)


def _chain_reference(
    plain: str, elements: Sequence[Any], raw: list[bytes], depth: int, out: Compacted
) -> str:
    if len(plain) < MIN_SHARED_CHARS:
        return plain
    chain = Chain(elements, Digests(raw), depth)
    out.chains.append(chain)
    return _reference("list", chain.prefixes[-1])


def _encode_chain(value: list[Any], depth: int, out: Compacted) -> tuple[str, str]:
    running = hashlib.sha256(b"[")
    plain_elements: list[str] = []
    prefixes: list[bytes] = []
    for element in value:
        plain = canonical(element)
        running.update((("," if plain_elements else "") + plain).encode("utf-8"))
        prefixes.append(running.digest())
        plain_elements.append(plain)
    plain = "[" + ",".join(plain_elements) + "]"
    return plain, _chain_reference(plain, value, prefixes, depth, out)


def compact(args_json: str) -> Compacted | None:
    """The compacted form of canonical ``args_json``, or None to store it plain (from scratch)."""
    if len(args_json) < MIN_ARGS_CHARS:
        return None
    try:
        value = json.loads(args_json)
        out = Compacted("")
        plain, stored = _encode(value, 0, False, out, out.blobs)
    except (ValueError, TypeError, RecursionError):
        return None  # not something this encoder spells canonically: stored plain
    if plain != args_json or MARKER not in stored:
        return None
    out.stored = stored
    return out


# --- incremental encoding ------------------------------------------------------------------------


class EncodedArgs:
    """A step's canonical arguments with what the writer needs to store them: computed once,
    where the workflow code asked for the step, instead of parsing the text again."""

    __slots__ = ("_digest", "compacted", "fresh", "text")

    def __init__(
        self, text: str, compacted: Compacted | None, fresh: int | None = None, digest: str | None = None
    ) -> None:
        self.text = text
        #: The compacted form (None: stored plain); exactly ``compact(text)``.
        self.compacted = compacted
        #: Characters of the text encoded anew, not reused from the previous step: what the
        #: workflow code added since (the workflow cache's estimate of what a run holds).
        self.fresh = len(text) if fresh is None else fresh
        self._digest = digest

    @property
    def digest(self) -> str:
        """:func:`canonical_digest` of the text (the journal's ``args_digest``)."""
        if self._digest is None:
            self._digest = canonical_digest(self.text)
        return self._digest


class _Inexact(Exception):
    """The value is not one the incremental path encodes exactly like the from-scratch one."""


@dataclass
class _ListMemo:
    """What the previous step's list at one path encoded to."""

    marshalled: bytes
    #: ``ends[i]``: the offset in ``marshalled`` where element ``i``'s serialisation ends.
    ends: list[int]
    texts: list[str]
    #: Raw SHA-256 of ``[`` and the texts of elements 0..i, joined by commas.
    prefixes: list[bytes]
    #: Running hashes after the last few elements, by index (copied before being continued).
    states: dict[int, Any]
    #: Elements whose canonical text does not survive a parse and re-encoding (a dict with
    #: non-string keys): a list holding one is stored plain, as the from-scratch path does.
    unstable: list[int]
    #: Leading elements reused from the previous step's list.
    kept: int = 0
    #: For the arguments' longest list: the text of the arguments before its first element,
    #: and running hashes of the whole arguments' text up to the end of its last few elements
    #: (so the next step's ``args_digest`` hashes only what follows its reused elements).
    head: str | None = None
    head_states: dict[int, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """An estimate of its memory: the bytes, about as many characters of text, and per
        element a string, a digest, an offset and list slots."""
        return 2 * len(self.marshalled) + 200 * len(self.texts)


@dataclass
class _Walk:
    """What one encoding found on its way."""

    #: False: some text does not survive a parse and re-encoding: stored plain, as from scratch.
    stable: bool = True
    #: Characters encoded anew (:attr:`EncodedArgs.fresh`).
    fresh: int = 0
    #: The lists met, as (path, memo, their elements' text joined: a piece of the text).
    lists: list[tuple[tuple[str, ...], _ListMemo, str]] = field(default_factory=list)


def _same_prefix(memo: _ListMemo, marshalled: bytes, count: int) -> int:
    """How many leading elements ``marshalled`` (a list of ``count``) shares with ``memo``."""
    ends = memo.ends
    old = memo.marshalled

    def same(k: int) -> bool:
        # A comparison in place (startswith takes a memoryview), not of two copied slices.
        return k == 0 or marshalled.startswith(memoryview(old)[_LIST_HEADER : ends[k - 1]], _LIST_HEADER)

    high = min(count, len(ends))
    # The usual cases first: all kept (messages appended), all but the last (marker moved).
    for k in (high, high - 1):
        if k >= 0 and same(k):
            return k
    low, high = 0, high - 2  # same(low) holds; find the largest k that is the same
    while low < high:
        middle = (low + high + 1) // 2
        if same(middle):
            low = middle
        else:
            high = middle - 1
    return low


class ArgsEncoder:
    """Encodes one workflow run's step arguments, reusing its previous step's lists (module doc).

    Not thread-safe: used by the run's code, on the replay runner's thread. Holds only text and
    bytes, never the workflow's own objects; bounded by :data:`MAX_MEMOISED_CALLS` and, per
    call, by the size of its latest arguments."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, dict[tuple[str, ...], _ListMemo]] = {}

    @property
    def size(self) -> int:
        """An estimate of the memory the memo holds, in bytes."""
        return sum(memo.size for lists in self._calls.values() for memo in lists.values())

    def encode(self, call: Hashable, value: Any) -> EncodedArgs:
        """The encoding of ``value``, the arguments of a step of ``call`` (its kind and name).

        Raises ``TypeError`` / ``ValueError`` exactly as :func:`canonical_json` does."""
        previous = self._calls.pop(call, {})
        current: dict[tuple[str, ...], _ListMemo] = {}
        try:
            encoded = self._encode(value, previous, current)
        except (_Inexact, ValueError, TypeError, RecursionError, UnicodeEncodeError):
            text = canonical_json(value)  # raises for invalid values, with the usual message
            return EncodedArgs(text, compact(text))
        self._calls[call] = current
        while len(self._calls) > MAX_MEMOISED_CALLS:
            del self._calls[next(iter(self._calls))]
        return encoded

    def _encode(
        self,
        value: Any,
        previous: dict[tuple[str, ...], _ListMemo],
        current: dict[tuple[str, ...], _ListMemo],
    ) -> EncodedArgs:
        out = Compacted("")
        walk = _Walk()
        pieces, stored = self._walk(value, 0, (), out, previous, current, walk)
        plain = "".join(pieces)  # the one copy of the whole text
        digest = _continued_digest(pieces, walk.lists, previous)
        if len(plain) < MIN_ARGS_CHARS or not walk.stable or MARKER not in stored:
            return EncodedArgs(plain, None, walk.fresh, digest)
        out.stored = stored
        return EncodedArgs(plain, out, walk.fresh, digest)

    def _walk(
        self,
        value: Any,
        depth: int,
        path: tuple[str, ...],
        out: Compacted,
        previous: dict[tuple[str, ...], _ListMemo],
        current: dict[tuple[str, ...], _ListMemo],
        walk: _Walk,
    ) -> tuple[list[str], str]:
        """``_encode(value, depth, False, ...)`` for the part of the arguments above their lists,
        taking each list from the memo: (the canonical text in pieces, to be joined once, and
        the stored text). Only exact types here, so that the result equals what ``_encode``
        gives for the value parsed back from its canonical text. Every text made here is
        checked for lone surrogates (``encode``), which canonical_json refuses."""
        if depth >= MAX_DEPTH or not isinstance(value, dict | list | tuple):
            plain, stored = _encode(value, depth, False, out, out.blobs)
            plain.encode("utf-8")
            if isinstance(value, dict | list | tuple) and canonical(json.loads(plain)) != plain:
                walk.stable = False  # deep down, a dict with non-string keys: stored plain
            walk.fresh += len(plain)
            return [plain], stored
        if type(value) is dict:
            pieces = ["{"]
            stored_items: list[str] = []
            for key in sorted(value):
                if type(key) is not str:
                    raise _Inexact  # parsed back, the key would be a string, sorted differently
                name = canonical(key) + ":"
                name.encode("utf-8")
                walk.fresh += len(name) + 1
                item, stored = self._walk(value[key], depth + 1, (*path, key), out, previous, current, walk)
                pieces.append("," + name if len(pieces) > 1 else name)
                pieces += item
                stored_items.append(name + stored)
            pieces.append("}")
            stored = "{" + ",".join(stored_items) + "}"
            if depth == 0 or len(stored) < MIN_SHARED_CHARS:
                return pieces, stored
            plain = "".join(pieces)
            return [plain], _blob(plain, stored, depth, False, out.blobs)
        if type(value) is not list:
            raise _Inexact  # a subclass or a tuple: parsed back, it would be a plain dict or list
        memo, fresh = _encode_list(value, previous.get(path))
        current[path] = memo
        walk.fresh += fresh + 2
        if memo.unstable:
            walk.stable = False
        joined = ",".join(memo.texts)
        walk.lists.append((path, memo, joined))
        if len(joined) + 2 < MIN_SHARED_CHARS:
            return ["[", joined, "]"], "[" + joined + "]"
        chain = Chain(_ParsedElements(memo.texts), Digests(memo.prefixes), depth)
        out.chains.append(chain)
        return ["[", joined, "]"], _reference("list", chain.prefixes[-1])


def _encode_list(value: list[Any], memo: _ListMemo | None) -> tuple[_ListMemo, int]:
    """The encoding of a list: its previous encoding's leading elements where they are exactly
    the same (compared as marshal bytes), the rest encoded and hashed on from there; and the
    characters of text encoded anew."""
    try:
        marshalled = marshal.dumps(value, _MARSHAL_VERSION)
    except ValueError:  # holds an object marshal does not serialise exactly (a subclass...)
        raise _Inexact from None
    kept = 0 if memo is None else _same_prefix(memo, marshalled, len(value))
    window = len(value) - KEPT_STATES
    if memo is None or kept == 0:
        ends: list[int] = []
        texts: list[str] = []
        prefixes: list[bytes] = []
        unstable: list[int] = []
        states: dict[int, Any] = {}
        running = hashlib.sha256(b"[")
    else:
        # New lists, not the memo's cut down: an earlier step's chain may still be unwritten.
        ends = memo.ends[:kept]
        texts = memo.texts[:kept]
        prefixes = memo.prefixes[:kept]
        unstable = [index for index in memo.unstable if index < kept]
        states = {index: state for index, state in memo.states.items() if window <= index < kept}
        state = memo.states.get(kept - 1)
        if state is not None:
            running = state.copy()
        else:  # changed further back than the kept states: hash the kept prefix again, once
            running = hashlib.sha256(("[" + ",".join(texts)).encode("utf-8"))
    offset = ends[-1] if ends else _LIST_HEADER
    fresh = 0
    for index in range(kept, len(value)):
        element = value[index]
        text = canonical(element)
        encoded = text.encode("utf-8")  # raises for a lone surrogate, as canonical_json refuses it
        running.update(b"," + encoded if index else encoded)
        prefixes.append(running.digest())
        if index >= window:
            states[index] = running.copy()
        texts.append(text)
        fresh += len(text) + 1
        offset += len(marshal.dumps(element, _MARSHAL_VERSION))
        ends.append(offset)
        if canonical(json.loads(text)) != text:
            unstable.append(index)
    if offset != len(marshalled):  # cannot happen with format 2; never trust a wrong split
        raise _Inexact
    return _ListMemo(marshalled, ends, texts, prefixes, states, unstable, kept), fresh


#: A list shorter than this (its elements' text) is not worth continuing the digest from.
_CONTINUED_DIGEST_CHARS = 4096


def _continued_digest(
    pieces: list[str],
    lists: list[tuple[tuple[str, ...], _ListMemo, str]],
    previous: dict[tuple[str, ...], _ListMemo],
) -> str | None:
    """``canonical_digest`` of ``"".join(pieces)``, hashing only what follows the reused elements
    of the longest list when the text before that list is the previous step's; None: not worth it
    (short lists), left to :attr:`EncodedArgs.digest`. Its running hashes are kept on its memo."""
    if not lists:
        return None
    path, memo, joined = max(lists, key=lambda item: len(item[2]))
    if len(joined) < _CONTINUED_DIGEST_CHARS:
        return None
    where = next(index for index, piece in enumerate(pieces) if piece is joined)
    head = "".join(pieces[:where])
    texts = memo.texts
    count = len(texts)
    earlier = previous.get(path)
    kept = memo.kept if earlier is not None and earlier.head == head else 0
    state = earlier.head_states.get(kept - 1) if earlier is not None and kept else None
    window = count - KEPT_STATES
    if state is not None:
        running = state.copy()
        states = (
            {index: saved for index, saved in earlier.head_states.items() if window <= index < kept}
            if earlier is not None
            else {}
        )
    else:  # no state to continue from (a first step, a changed head, an edit far back): once in full
        running = hashlib.sha256((head + ",".join(texts[:kept])).encode("utf-8"))
        states = {}
        if kept and kept - 1 >= window:
            states[kept - 1] = running.copy()
    for index in range(kept, count):
        running.update(("," + texts[index] if index else texts[index]).encode("utf-8"))
        if index >= window:
            states[index] = running.copy()
    memo.head = head
    memo.head_states = states
    running.update("".join(pieces[where + 1 :]).encode("utf-8"))
    return b64(running.digest())
