"""loadsim: an asyncio load simulator for PostgreSQL connection pools."""

__version__ = "0.1.0"
