"""Move money between two accounts: either everything happens or nothing does.

Runs on the embedded default (SQLite); set STRATA_DATABASE_URL / STRATA_REDIS_URL to run the
same code on PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema, Tx


class Account(BaseModel):
    id: str = Field(primary_key=True)
    owner: str
    balance: int = 0


class InsufficientFunds(Exception):
    pass


async def transfer(ds: DataStore, src: str, dst: str, amount: int) -> None:
    async with ds.tx() as tx:
        # Lock both rows (in key order, so two transfers cannot deadlock).
        accounts = await tx.get_many(Account, [src, dst], for_update=True)
        a, b = accounts[src], accounts[dst]
        if a.balance < amount:
            raise InsufficientFunds(f"{a.owner} has {a.balance}, cannot send {amount}")
        await tx.set(Account, a.model_copy(update={"balance": a.balance - amount}))
        await tx.set(Account, b.model_copy(update={"balance": b.balance + amount}))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Config.from_env()
        if config.database_url is None:
            config = config.with_(database_url=f"sqlite:///{Path(tmp) / 'bank.db'}")
        ds = DataStore(config)
        ds.register(Schema(name="accounts", model=Account))
        async with ds:
            await ds.migrate()
            await ds.set_many(
                Account,
                [Account(id="alice", owner="Alice", balance=100), Account(id="bob", owner="Bob")],
            )

            await transfer(ds, "alice", "bob", 30)
            print("after 30 ->", await balances(ds))

            try:
                await transfer(ds, "bob", "alice", 500)
            except InsufficientFunds as exc:
                print("refused:", exc)
            print("unchanged ->", await balances(ds))

            async def fee(tx: Tx) -> int:  # retried on serialization conflicts
                acc = await tx.get(Account, "bob", for_update=True)
                await tx.set(Account, acc.model_copy(update={"balance": acc.balance - 1}))
                return acc.balance - 1

            left = await ds.retry_tx(fee, attempts=3)
            print("after a fee, bob has", left)


async def balances(ds: DataStore) -> dict[str, int]:
    accounts = await ds.get_many(Account, ["alice", "bob"])
    return {a.id: a.balance for a in accounts.values()}


if __name__ == "__main__":
    asyncio.run(main())
