"""The incremental step-argument encoder (coordinator/args_encoding.py) against the from-scratch
path, on random sequences of requests whose lists grow, are edited, trimmed and mutated in place.

Each request's encoding must be exactly what the from-scratch path gives: the canonical text of
``canonical_json``, its digest, and the same compacted form (stored text, parts, chains with
their prefix digests and the runs a writer would store), or the same error for invalid values.
A wrong reuse would record arguments the code did not send, and fail a later replay with a
spurious non-determinism error, so the cases that fool ``==`` are drawn on purpose: ``1`` /
``1.0`` / ``True`` / ``-0.0`` swapped in place, tuples, non-string keys, subclasses.
"""

from __future__ import annotations

import copy
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.coordinator import args_encoding
from conveyor.coordinator.args_encoding import KEPT_STATES, ArgsEncoder, Compacted, EncodedArgs, compact
from conveyor.coordinator.model import canonical_digest, canonical_json


class LyingDict(dict[str, Any]):
    """Equal to any dict: ``==`` must not decide that an element is unchanged."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict)

    __hash__ = None  # type: ignore[assignment]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, 1.0, 0.0, -0.0, 2**63, 1e16, 0.1]),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.text(alphabet='ab\u00e9\u4e2d\U0001f600"\\\n', min_size=100, max_size=400),  # parts of their own
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
    ),
    max_leaves=12,
)
messages = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": json_values})

# What happens to the conversation between two steps.
operations = st.one_of(
    st.tuples(st.just("append"), messages),
    st.tuples(st.just("append"), messages),
    st.tuples(st.just("replace"), st.integers(0, 10**6), messages),
    st.tuples(st.just("mutate"), st.integers(0, 10**6), json_values),
    st.tuples(st.just("retype"), st.integers(0, 10**6), st.sampled_from([1, 1.0, True, 0, -0.0, 0.0, False])),
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("trim"), st.integers(1, 3)),
    st.tuples(
        st.just("marker"),
    ),
    st.tuples(
        st.just("odd"), st.sampled_from(["tuple", "int keys", "lying dict", "set", "nan", "surrogate"])
    ),
    st.tuples(st.just("top"), st.sampled_from(["model", "drop system", "nested list", "tuple tools"])),
)


def apply(request: dict[str, Any], operation: tuple[Any, ...]) -> None:
    """Change ``request`` in place, as workflow code does between steps."""
    history: list[Any] = request["messages"]
    kind = operation[0]
    if kind == "append":
        history.append(copy.deepcopy(operation[1]))
    elif kind in ("replace", "mutate", "retype", "delete") and history:
        index = operation[1] % len(history)
        if kind == "replace":
            history[index] = copy.deepcopy(operation[2])
        elif kind == "delete":
            del history[index]
        elif isinstance(history[index], dict):
            history[index]["content"] = copy.deepcopy(operation[2])  # in place: same object, new value
        else:
            history[index] = copy.deepcopy(operation[2])
    elif kind == "trim":
        del history[: operation[1]]
    elif kind == "marker" and history and isinstance(history[-1], dict):
        for message in history:
            if isinstance(message, dict):
                message.pop("cache_control", None)
        history[-1]["cache_control"] = {"type": "ephemeral"}  # moved on to the newest message
    elif kind == "odd":
        odd: Any = {
            "tuple": {"role": "user", "content": ("a", 1, (2.0, None))},
            "int keys": {"role": "user", "content": {10: "x", 9: "y"}},
            "lying dict": LyingDict(role="user", content="lies"),
            "set": {"role": "user", "content": {1, 2}},
            "nan": {"role": "user", "content": float("nan")},
            "surrogate": {"role": "user", "content": "\ud800"},
        }[operation[1]]
        history.append(odd)
    elif kind == "top":
        change = operation[1]
        if change == "model":
            request["model"] = request["model"] + "x"
        elif change == "drop system":
            request.pop("system", None)
        elif change == "nested list":
            request["metadata"] = {"history": list(history)}  # a second chain, sharing elements
        else:
            request["tools"] = tuple(request["tools"])


def assert_same_compacted(got: Compacted | None, expected: Compacted | None) -> None:
    if expected is None or got is None:
        assert got is expected
        return
    assert got.stored == expected.stored
    assert got.blobs == expected.blobs
    assert len(got.chains) == len(expected.chains)
    for mine, theirs in zip(got.chains, expected.chains, strict=True):
        assert mine.depth == theirs.depth
        assert list(mine.prefixes) == list(theirs.prefixes)
        assert list(mine.elements) == list(theirs.elements)
        length = len(mine.prefixes)
        for start in {0, max(0, length - 2), length - 1}:
            mine_found: dict[str, str] = {}
            theirs_found: dict[str, str] = {}
            assert mine.stored_run(start, length, mine_found) == theirs.stored_run(
                start, length, theirs_found
            )
            assert mine_found == theirs_found


def check(encoder: ArgsEncoder, key: Any, request: dict[str, Any]) -> EncodedArgs | None:
    try:
        text = canonical_json(request)
    except (TypeError, ValueError) as error:
        with pytest.raises(type(error)) as raised:
            encoder.encode(key, request)
        assert str(raised.value) == str(error)
        return None
    encoded = encoder.encode(key, request)
    assert encoded.text == text
    assert encoded.digest == canonical_digest(text)
    assert_same_compacted(encoded.compacted, compact(text))
    return encoded


def start_request(first: list[Any], system_chars: int) -> dict[str, Any]:
    return {
        "model": "claude",
        "max_tokens": 1024,
        "system": "s" * system_chars,
        "tools": [{"name": "search", "description": "d" * 150}],
        "messages": copy.deepcopy(first),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.lists(messages, max_size=6),
    system_chars=st.sampled_from([0, 200]),
    steps=st.lists(operations, min_size=1, max_size=25),
    continue_digest_from=st.sampled_from([0, 300, 4096]),
)
def test_incremental_encoding_equals_the_from_scratch_path(
    first: list[Any], system_chars: int, steps: list[tuple[Any, ...]], continue_digest_from: int
) -> None:
    # The digest is continued from the previous step's only for long lists: lowered here, so
    # that the short lists drawn exercise it too.
    with mock.patch.object(args_encoding, "_CONTINUED_DIGEST_CHARS", continue_digest_from):
        run_steps(first, system_chars, steps)


def run_steps(first: list[Any], system_chars: int, steps: list[tuple[Any, ...]]) -> None:
    encoder = ArgsEncoder()
    request = start_request(first, system_chars)
    check(encoder, "turn", request)
    for operation in steps:
        apply(request, operation)
        if operation[0] == "odd" and operation[1] in ("set", "nan", "surrogate"):
            check(encoder, "turn", request)  # refused, as canonical_json refuses it; then taken out
            request["messages"].pop()
        check(encoder, "turn", request)
        check(encoder, "other", {"kind": "k", "payload": request["messages"][-3:]})  # a second call's memo


@mock.patch.object(args_encoding, "_CONTINUED_DIGEST_CHARS", 0)
def test_a_long_history_changed_before_the_kept_hash_states_is_hashed_again() -> None:
    encoder = ArgsEncoder()
    history = [{"role": "user", "content": f"message {index} " + "x" * 40} for index in range(40)]
    request = start_request(history, 0)
    check(encoder, "turn", request)
    request["messages"][40 - KEPT_STATES - 5]["content"] = "edited far back"
    request["messages"].append({"role": "assistant", "content": "and a new one"})
    check(encoder, "turn", request)
    request["messages"][3]["n"] = 1
    check(encoder, "turn", request)
    request["messages"][3]["n"] = 1.0  # == says unchanged; the canonical text is not
    check(encoder, "turn", request)
    request["messages"][3]["n"] = True
    check(encoder, "turn", request)
    del request["messages"][-KEPT_STATES - 2 :]  # trimmed back beyond the kept states
    check(encoder, "turn", request)
    request["model"] = "another"  # the text after the list changed: the digest still follows
    check(encoder, "turn", request)
    request["max_tokens"] = 7  # the text before the list changed: hashed in full again
    check(encoder, "turn", request)
