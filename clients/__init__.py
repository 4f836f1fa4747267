"""Conveyor's Python client: :class:`AsyncClient` for asyncio code, :class:`Client` for the rest."""

from .client import AsyncClient
from .sync import Client

__all__ = ["AsyncClient", "Client"]
