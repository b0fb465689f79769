"""Integration tests against real PostgreSQL and Redis (see integration/conftest.py).

A package so its modules import as ``integration.<name>`` (no clash with tests/ module
names) and helpers import as ``from integration._servers import PrivateRedis``.
"""
