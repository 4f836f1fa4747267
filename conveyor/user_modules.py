"""Importing the user's modules (``--workflows``, ``--handlers``): as Python would, then from the cwd.

``python -m`` and ``python script.py`` put a directory on ``sys.path`` for the user; the
installed ``conveyor`` command does not (its ``sys.path[0]`` is the directory of the
script), so ``conveyor coordinator --workflows mymodule`` next to ``mymodule.py`` failed.
A module name not found anywhere else is therefore looked up in the current directory, which
is appended to ``sys.path`` (not put first: it must not shadow installed packages, as a
``json.py`` in the directory would otherwise shadow the standard library's). Once appended it
stays, so the module's own imports of its neighbours work too.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from .errors import ConfigurationError


def import_user_module(module_name: str, what: str) -> ModuleType:
    """Import ``module_name`` (``what``: "workflow module", for messages), trying the cwd last."""
    if module_name.endswith(".py") or os.sep in module_name:
        suggestion = module_name.removesuffix(".py").replace(os.sep, ".").strip(".")
        raise ConfigurationError(
            f"{what} {module_name!r} is a file path; give a module name ({suggestion!r}), run from the "
            "directory that holds it or with that directory on PYTHONPATH"
        )
    try:
        return _import(module_name, what)
    except ModuleNotFoundError as error:
        cwd = os.getcwd()
        if error.name != module_name.partition(".")[0] or "" in sys.path or cwd in sys.path:
            raise ConfigurationError(_not_found(module_name, what, error)) from error
        sys.path.append(cwd)
        importlib.invalidate_caches()
        try:
            return _import(module_name, what)
        except ModuleNotFoundError as retried:
            raise ConfigurationError(_not_found(module_name, what, retried)) from retried


def _import(module_name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        raise
    except ImportError as error:
        raise ConfigurationError(f"cannot import {what} {module_name!r}: {error}") from error


def _not_found(module_name: str, what: str, error: ModuleNotFoundError) -> str:
    return (
        f"cannot import {what} {module_name!r}: {error}. Modules are found on sys.path, then in the "
        f"current directory ({os.getcwd()}): install the module, run from the directory that holds it, "
        "or put that directory on PYTHONPATH"
    )
