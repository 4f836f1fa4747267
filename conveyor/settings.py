"""Options defined once: each one's flag, environment variable, config-file key, default and help.

An :class:`Option` is the only place an option's default, type, bounds and help live. From it
come the command-line flag (``task_timeout`` → ``--task-timeout``), the environment variable
(``CONVEYOR_TASK_TIMEOUT``), the key of the TOML config file (``task_timeout = 600``), the
``--help`` text, the README's table (:func:`markdown_table`) and the defaults of the
configuration dataclasses (``lease_ttl: float = OPTIONS.defaults.lease_ttl``).

A value is taken from the first of these that sets it::

    command-line flag  >  CONVEYOR_* environment variable  >  config file  >  default

The config file is ``--config FILE`` or ``$CONVEYOR_CONFIG``. A key the file should not hold
(a typo, another process's option) is an error, as is a value of the wrong type or out of
bounds, from wherever it came; the message names its source. A ``secret`` option's value is
never repeated in a message.

Adding an option is one more :class:`Option` in its component's :class:`Options` (for example
``coordinator/config.py``'s ``OPTIONS``; options several components share are an :class:`Options`
of their own added with ``+``, as ``logs.LOG_OPTIONS`` is); the flag, variable, file key and help
follow, and ``python -m conveyor.settings`` prints the README's new tables.

A boolean flag (``--insecure``) can only switch its option on: to switch off one that the
environment or the file switched on, set the variable to ``0``.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import textwrap
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .durations import format_duration, parse_duration
from .errors import ConfigurationError, InvalidArgument

ENV_PREFIX = "CONVEYOR_"
CONFIG_ENV = "CONVEYOR_CONFIG"

PRECEDENCE = textwrap.fill(
    "Every option is also read from the environment variable named in its help "
    "(CONVEYOR_ and its name in capitals) and from the TOML file given by --config FILE or "
    "$CONVEYOR_CONFIG (its name with underscores: lease_ttl = 20). A flag beats the environment, "
    "the environment beats the file, the file beats the default.",
    90,
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class Kind(Enum):
    """What values an option takes; each kind parses text (flags, the environment) and TOML values."""

    INT = "an integer"
    FLOAT = "a number"
    TEXT = "text"
    BOOL = "true or false"
    PATH = "a file path"
    #: Repeatable: a flag given several times, a comma-separated variable, a TOML array of strings.
    LIST = "a list of names"
    #: Seconds, written ``90m``, ``12h``, ``7d`` (:mod:`conveyor.durations`) or as a number.
    DURATION = "a duration (90m, 12h, 7d)"


@dataclass(frozen=True)
class Option:
    #: Lower case with underscores: the config-file key; the flag and variable derive from it.
    name: str
    kind: Kind
    default: Any
    help: str
    #: The flag, if it differs from ``--`` and the name with dashes; ``None``: no flag at all.
    flag: str | None = ""
    #: The field of the component's config dataclass; ``""``: the name; ``None``: not a field.
    field: str | None = ""
    choices: tuple[str, ...] = ()
    #: Inclusive bounds of a number.
    low: float | None = None
    high: float | None = None
    #: The value itself is a credential: never shown in a message (nor read from a file).
    secret: bool = False
    required: bool = False
    #: May the config file set it (not the config file's own name, not a secret).
    in_file: bool = True
    metavar: str | None = None
    #: The default as people read it in --help and the README (``1 MiB``, ``off``).
    default_text: str | None = None
    #: The --help section it is listed in (``None``: the command's main options).
    group: str | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag_name(self) -> str | None:
        if self.flag is None:
            return None
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def field_name(self) -> str | None:
        return self.name if self.field == "" else self.field

    def shown_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if self.kind is Kind.BOOL:
            return "off" if not self.default else "on"
        if self.default is None or self.default == ():
            return "required" if self.required else "none"
        return _number(self.default) if isinstance(self.default, float) else str(self.default)

    def parse_text(self, text: str, source: str) -> Any:
        """``text`` (a flag's or a variable's) as this option's value; ``source`` names it in errors."""
        if self.kind is Kind.BOOL:
            lowered = text.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ConfigurationError(f"{source}={self._shown(text)} is not {self.kind.value}")
            return lowered in _TRUE
        if self.kind is Kind.LIST:
            return tuple(item.strip() for item in text.split(",") if item.strip())
        if self.kind is Kind.DURATION:
            try:
                return self.check(parse_duration(text), source)
            except InvalidArgument:
                raise ConfigurationError(f"{source}={self._shown(text)} is not {self.kind.value}") from None
        if self.kind is Kind.INT:
            try:
                value: Any = int(text)
            except ValueError:
                raise ConfigurationError(f"{source}={self._shown(text)} is not {self.kind.value}") from None
        elif self.kind is Kind.FLOAT:
            try:
                value = float(text)
            except ValueError:
                raise ConfigurationError(f"{source}={self._shown(text)} is not {self.kind.value}") from None
        elif self.kind is Kind.PATH:
            if not text:
                raise ConfigurationError(f"{source} is empty; it should name a file")
            value = Path(text)
        else:
            value = text
        return self.check(value, source)

    def parse_file_value(self, value: object, source: str) -> Any:
        """A TOML value as this option's value."""
        expected: tuple[type, ...] = {
            Kind.INT: (int,),
            Kind.FLOAT: (int, float),
            Kind.TEXT: (str,),
            Kind.BOOL: (bool,),
            Kind.PATH: (str,),
            Kind.LIST: (list,),
            Kind.DURATION: (str, int, float),
        }[self.kind]
        # bool is an int in Python; TOML's true is no number.
        if not isinstance(value, expected) or (isinstance(value, bool) and self.kind is not Kind.BOOL):
            raise ConfigurationError(f"{source} = {self._shown(value)} is not {self.kind.value}")
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise ConfigurationError(f"{source} = {self._shown(value)} is not a list of strings")
            return tuple(value)
        if self.kind is Kind.DURATION and isinstance(value, str):
            return self.parse_text(value, source)
        if self.kind in (Kind.FLOAT, Kind.DURATION) and isinstance(value, int | float):
            value = float(value)
        if self.kind is Kind.PATH:
            value = Path(str(value))
        return self.check(value, source)

    def check(self, value: Any, source: str) -> Any:
        """``value`` if it is within this option's choices and bounds."""
        if self.choices and value not in self.choices:
            raise ConfigurationError(f"{source}={self._shown(value)} is not one of {', '.join(self.choices)}")
        if isinstance(value, float) and math.isnan(value):
            raise ConfigurationError(f"{source}={self._shown(value)} is not a number")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigurationError(f"{source}={self._shown(value)} is not {self.bounds_text()}")
        return value

    def bounds_text(self) -> str:
        shown = format_duration if self.kind is Kind.DURATION else _number
        low, high = (None if bound is None else shown(bound) for bound in (self.low, self.high))
        if self.low is not None and self.high is not None:
            return f"between {low} and {high}"
        return f"at least {low}" if self.low is not None else f"at most {high}"

    def _shown(self, value: Any) -> str:
        return "(hidden)" if self.secret else repr(str(value) if isinstance(value, Path) else value)

    def help_text(self) -> str:
        details = [f"default {self.shown_default()}"] if not self.required else ["required"]
        if self.low is not None or self.high is not None:
            details.append(self.bounds_text())
        details.append(f"${self.env}")
        # argparse formats help with %: a literal one must be doubled.
        return f"{self.help} ({'; '.join(details)})".replace("%", "%%")


def _wrapped(text: str | None) -> str | None:
    # The commands' help keeps their descriptions' line breaks (examples), so it wraps nothing.
    return None if text is None else textwrap.fill(text, 90)


_METAVARS = {
    Kind.INT: "N",
    Kind.FLOAT: "SECONDS",
    Kind.TEXT: "TEXT",
    Kind.PATH: "FILE",
    Kind.LIST: "NAME",
    Kind.DURATION: "DURATION",
}


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Options:
    """The options of one component, in the order --help lists them."""

    def __init__(self, *options: Option, groups: Mapping[str, str] | None = None) -> None:
        """``groups``: the description --help gives each :attr:`Option.group`."""
        self._options = {option.name: option for option in options}
        if len(self._options) != len(options):
            raise ValueError("two options share a name")
        self.groups = dict(groups or {})
        #: Each option's default by name, for the fields of a config dataclass:
        #: ``lease_ttl: float = OPTIONS.defaults.lease_ttl``.
        self.defaults = SimpleNamespace(**{option.name: option.default for option in options})

    def __iter__(self) -> Iterator[Option]:
        return iter(self._options.values())

    def __getitem__(self, name: str) -> Option:
        return self._options[name]

    def __add__(self, other: Options) -> Options:
        return Options(
            *self,
            *(option for option in other if option.name not in self._options),
            groups={**other.groups, **self.groups},
        )

    def only(self, *names: str) -> Options:
        return Options(*(self._options[name] for name in names), groups=self.groups)

    def without(self, *names: str) -> Options:
        return Options(*(option for option in self if option.name not in names), groups=self.groups)

    def check_bounds(self, config: object) -> None:
        """Raise ValueError if a field of ``config`` (a config dataclass) is out of its option's bounds."""
        for option in self:
            value = getattr(config, option.field_name or "", None)
            if value is not None and (option.low is not None or option.high is not None):
                try:
                    option.check(value, option.field_name or option.name)
                except ConfigurationError as error:
                    raise ValueError(str(error)) from None

    def add_arguments(self, parser: argparse.ArgumentParser, *, config_file: bool = True) -> None:
        """One flag per option (default ``None``: not given), grouped as the options say."""
        groups: dict[str | None, Any] = {None: parser}
        if config_file:
            parser.add_argument(
                "--config",
                type=Path,
                metavar="FILE",
                help=f"TOML file of options (default ${CONFIG_ENV}); flags and variables beat it",
            )
        for option in self:
            flag = option.flag_name
            if flag is None:
                continue
            if option.group not in groups:
                groups[option.group] = parser.add_argument_group(
                    option.group, _wrapped(self.groups.get(option.group or ""))
                )
            group = groups[option.group]
            kwargs: dict[str, Any] = {"dest": option.name, "default": None, "help": option.help_text()}
            if option.kind is Kind.BOOL:
                group.add_argument(flag, action="store_true", **kwargs)
                continue
            if option.kind is Kind.LIST:
                kwargs["action"] = "append"
            else:
                kwargs["type"] = _flag_type(option, flag)
            if option.choices:
                kwargs["metavar"] = "{" + ",".join(option.choices) + "}"
            else:
                kwargs["metavar"] = option.metavar or _METAVARS[option.kind]
            group.add_argument(flag, **kwargs)

    def resolve(
        self,
        args: argparse.Namespace | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        config_file: Path | None = None,
        files: bool = True,
    ) -> Resolved:
        """Every option's value: its flag's in ``args``, else the environment's, else the file's, else
        its default. The file is ``config_file``, else ``args.config``, else ``$CONVEYOR_CONFIG``; with
        ``files=False`` no file is read (the client commands read none)."""
        environ = os.environ if environ is None else environ
        path = config_file or (getattr(args, "config", None) if args is not None else None)
        if not files:
            path = None
        elif path is None and environ.get(CONFIG_ENV):
            path = Path(environ[CONFIG_ENV])
        from_file = self.read_file(path) if path is not None else {}
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for option in self:
            given = getattr(args, option.name, None) if args is not None and option.flag_name else None
            if given is not None and given is not False:
                values[option.name] = tuple(given) if option.kind is Kind.LIST else given
                sources[option.name] = option.flag_name or option.name
            elif environ.get(option.env) not in (None, ""):
                values[option.name] = option.parse_text(environ[option.env], option.env)
                sources[option.name] = option.env
            elif option.name in from_file:
                values[option.name] = from_file[option.name]
                sources[option.name] = f"{path}: {option.name}"
            elif option.required:
                flag = f"{option.flag_name}, " if option.flag_name else ""
                raise ConfigurationError(
                    f"{option.name} is required: give {flag}${option.env} or {option.name} in a --config file"
                )
            else:
                values[option.name] = option.default
                sources[option.name] = "default"
        return Resolved(values, sources)

    def read_file(self, path: Path) -> dict[str, Any]:
        """The options a TOML file sets, checked: an unknown key or a bad value is an error."""
        try:
            with path.open("rb") as file:
                table = tomllib.load(file)
        except OSError as error:
            reason = error.strerror or error
            raise ConfigurationError(f"cannot read the config file {path}: {reason}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigurationError(f"the config file {path} is not valid TOML: {error}") from None
        allowed = {option.name: option for option in self if option.in_file and not option.secret}
        values: dict[str, Any] = {}
        for key, value in table.items():
            option = allowed.get(key)
            if option is None:
                close = difflib.get_close_matches(key, list(allowed), n=1)
                known = ", ".join(sorted(allowed))
                hint = f" (did you mean {close[0]}?)" if close else f"; known keys: {known}"
                raise ConfigurationError(f"{path}: unknown key {key!r}{hint}")
            values[key] = option.parse_file_value(value, f"{path}: {key}")
        return values


@dataclass(frozen=True)
class Resolved:
    """Every option's value and where it came from (a flag, a variable, the file, ``default``)."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def fields(self, options: Options) -> dict[str, Any]:
        """The values of the options that are fields of the component's config dataclass."""
        return {
            option.field_name: self.values[option.name]
            for option in options
            if option.field_name is not None and option.name in self.values
        }

    def namespace(self) -> argparse.Namespace:
        return argparse.Namespace(**self.values)


def _flag_type(option: Option, flag: str) -> Any:
    def parse(text: str) -> Any:
        try:
            return option.parse_text(text, flag)
        except ConfigurationError as error:
            # argparse names the flag itself: "argument --lease-ttl: 'abc' is not a number".
            raise argparse.ArgumentTypeError(str(error).removeprefix(f"{flag}=")) from None

    parse.__name__ = option.kind.value  # argparse names the type in some messages
    return parse


def markdown_table(options: Options) -> str:
    """The README's table of ``options``: flag, variable, default and meaning."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for option in options:
        flag = f"`{option.flag_name}`" if option.flag_name else "(none)"
        meaning = option.help
        if option.low is not None or option.high is not None:
            meaning += f"; {option.bounds_text()}"
        if option.choices:
            meaning += f"; one of {', '.join(f'`{choice}`' for choice in option.choices)}"
        if not option.in_file or option.secret:
            meaning += "; not read from the config file"
        meaning = meaning.replace("|", "\\|")
        rows.append(f"| {flag} | `{option.env}` | {option.shown_default()} | {meaning} |")
    return "\n".join(rows)


def readme_sections() -> Sequence[tuple[str, Options]]:
    """Each documented component's options, as the README lists them."""
    # Imported here: this module is imported by them.
    from conveyor.coordinator.config import OPTIONS as COORDINATOR
    from conveyor.executor.options import OPTIONS as EXECUTOR
    from conveyor.transport import CLIENT_OPTIONS

    return (("coordinator", COORDINATOR), ("executor", EXECUTOR), ("client", CLIENT_OPTIONS))


def readme_tables() -> str:
    """The generated block of the README (between its ``options`` markers)."""
    titles = {"client": "Client commands (`conveyor start` ...) and `Client.from_env()`"}
    return "\n\n".join(
        f"{titles.get(name, f'`conveyor {name}`')}:\n\n{markdown_table(options)}"
        for name, options in readme_sections()
    )


if __name__ == "__main__":  # python -m conveyor.settings: print the README's tables
    print(readme_tables())
