"""A tokens file with one token per role, as the security tests' coordinators use it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

#: The executor id the bound executor token belongs to.
BOUND_EXECUTOR = "bound-executor"


@dataclass(frozen=True)
class Tokens:
    file: Path
    client: str
    executor: str
    #: An executor token that may act only as :data:`BOUND_EXECUTOR`.
    bound_executor: str
    admin: str

    @classmethod
    def write(cls, path: Path) -> Tokens:
        tokens = cls(
            path,
            client=secrets.token_hex(16),
            executor=secrets.token_hex(16),
            bound_executor=secrets.token_hex(16),
            admin=secrets.token_hex(16),
        )
        path.write_text(
            "# role     token   [executor id]\n"
            f"client     {tokens.client}\n"
            f"executor   {tokens.executor}\n"
            f"executor   {tokens.bound_executor}   {BOUND_EXECUTOR}\n"
            f"admin      {tokens.admin}   # operators\n"
        )
        path.chmod(0o600)
        return tokens
