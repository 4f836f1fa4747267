"""Checks on what clients and executors send, before anything touches the database.

Every failure is an :class:`~conveyor.errors.InvalidArgument` whose message names
the field and says what would be accepted.
"""

from __future__ import annotations

import json
import math
from typing import Any

from conveyor.errors import InvalidArgument
from conveyor.workflow import WorkflowDefinition, WorkflowRegistry

from .model import canonical_json

MAX_NAME_LENGTH = 200
#: Operator and client reasons are stored with what they affect and shown by every reader.
MAX_REASON_LENGTH = 2000


def identifier(value: str, field: str, *, required: bool = True) -> str:
    """A name-like string: bounded, printable, no surrounding whitespace."""
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required")
        return value
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"{field} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    if value != value.strip() or not value.isprintable():
        raise InvalidArgument(f"{field} {value!r} must be printable, without surrounding whitespace")
    return value


def reason(value: str) -> str:
    """A free-text reason (cancel, fail, clear, bump epoch): bounded, since it is stored and shown."""
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidArgument(f"reason is {len(value)} characters long; the limit is {MAX_REASON_LENGTH}")
    if "\x00" in value:
        raise InvalidArgument("reason must not contain NUL characters (PostgreSQL text cannot store them)")
    return value


def storable_text(text: str) -> str:
    """Free text (an error message) as every database can store it: PostgreSQL refuses NUL
    characters, so they are written out as ``\\x00``; lone surrogates (not Unicode, refused by
    both databases) as ``\\udXXX``."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def step_name(value: str, what: str) -> str:
    """A step name or task kind chosen by workflow code: stored as a name, so bounded and printable.

    Raises ``ValueError`` inside the workflow, which fails it with this message.
    """
    problem = _step_name_problem(value, what)
    if problem:
        raise ValueError(problem)
    return value


def signal_name(value: str) -> str:
    """A signal name a client sends: the rule workflow code's ``wait_for_signal`` names follow
    (:func:`step_name`), so any name the code can wait for can be sent, and no other."""
    problem = _step_name_problem(value, "signal name")
    if problem:
        raise InvalidArgument(problem)
    return value


def _step_name_problem(value: str, what: str) -> str | None:
    if not value or len(value) > MAX_NAME_LENGTH or not value.isprintable():
        return (
            f"{what} {value[:60]!r} must be 1 to {MAX_NAME_LENGTH} printable characters "
            f"(it is {len(value)} long)"
        )
    return None


def payload_size(text: str, field: str, limit: int) -> None:
    size = len(text.encode())
    if size > limit:
        raise InvalidArgument(
            f"{field} is {size} bytes; the limit is {limit} bytes (see --max-payload-bytes)"
        )


def workflow_start(
    registry: WorkflowRegistry, name: str, args_json: str, limit: int
) -> tuple[WorkflowDefinition, str]:
    """The workflow to start and its arguments in canonical JSON."""
    identifier(name, "workflow name")
    definition = registry.get(name)
    if definition is None:
        known = ", ".join(registry.names()) or "none"
        raise InvalidArgument(f"unknown workflow {name!r}; this coordinator runs: {known}")
    payload_size(args_json, "args_json", limit)
    args = _decode_arguments(args_json)
    try:
        definition.check_arguments(args)
    except TypeError as error:
        raise InvalidArgument(
            f"arguments do not fit workflow {name!r}{definition.signature}: {error}"
        ) from None
    return definition, canonical_json(args)


def loads(text: str) -> Any:
    """``text`` decoded as JSON that every later step can handle again.

    Beyond invalid JSON (``json.JSONDecodeError``) and nesting too deep (``RecursionError``)
    it raises ``ValueError`` for integers longer than Python converts
    (``sys.get_int_max_str_digits()``, 4,300 digits by default) and for NaN, Infinity and
    floats too large for a double, which canonical JSON cannot write back.
    """
    return json.loads(text, parse_constant=_non_finite, parse_float=_finite_float)


def _non_finite(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large for a double")
    return value


def json_value(text: str, field: str, limit: int) -> str:
    """Any JSON value a client sent (a signal's payload), in canonical JSON."""
    payload_size(text, field, limit)
    return _canonical(_decode(text, field), field)


def _decode_arguments(args_json: str) -> list[Any] | dict[str, Any]:
    if not args_json.strip():
        return []
    args = _decode(args_json, "args_json")
    if not isinstance(args, dict | list):
        raise InvalidArgument(
            "args_json must be a JSON object (keyword arguments) or array (positional arguments), "
            f"not {type(args).__name__}"
        )
    _canonical(args, "args_json")
    return args


def _decode(text: str, field: str) -> Any:
    try:
        return loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"{field} is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidArgument(f"{field} is nested too deeply to decode") from None
    except ValueError as error:  # a huge integer, NaN, Infinity
        raise InvalidArgument(f"{field} holds a value JSON cannot carry: {error}") from None


def _canonical(value: Any, field: str) -> str:
    try:
        return canonical_json(value)
    except RecursionError:
        raise InvalidArgument(f"{field} is nested too deeply to encode") from None
    except ValueError as error:  # a lone surrogate: not text any database can store
        raise InvalidArgument(f"{field} cannot be stored: {error}") from None


def result_json(text: str, limit: int) -> str | None:
    """Why an executor's success payload is unacceptable, or None if it is fine."""
    # A character is at most 4 bytes of UTF-8: only a text that might be over the limit is encoded.
    if len(text) * 4 > limit and (size := len(text.encode())) > limit:
        return f"the step's result is {size} bytes; the limit is {limit} bytes"
    try:
        value = loads(text)
        # What decodes is JSON the coordinator can write back, except a lone surrogate, which only a
        # \u escape can produce (the text arrived as UTF-8): canonical_json refuses it. Encoding every
        # result again only to find out cost more than decoding it.
        if "\\u" in text:
            canonical_json(value)
    except json.JSONDecodeError as error:
        return f"the executor returned a result that is not JSON: {error}"
    except RecursionError:
        return "the executor returned a result nested too deeply to decode"
    except ValueError as error:  # a huge integer, NaN, Infinity, a lone surrogate
        return f"the executor returned a result the coordinator cannot accept or store: {error}"
    return None
