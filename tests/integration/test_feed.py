"""The change feed (services/feed.py) on the session's real Valkey: one subscription for
many followers, order, filtering, a slow follower dropped without stalling the others, a
broken subscription ending every follower, a dead Redis, and a clean close."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from agentmesh_cli.embedded import free_port
from agentmesh_cli.errors import FellBehind, StoreError
from agentmesh_cli.services.feed import ChannelFeed, Follower


def decode(raw: bytes) -> str | None:
    text = raw.decode()
    return None if text == "foreign" else text


async def drain(follower: Follower[str], count: int) -> list[str]:
    got: list[str] = []
    while len(got) < count:
        message = await follower.next(2.0)
        assert message is not None, f"only {got} arrived"
        got.append(message)
    return got


async def pubsub_ids(client: aioredis.Redis) -> set[int]:
    clients: list[dict[str, Any]] = await client.client_list(_type="pubsub")
    return {int(entry["id"]) for entry in clients}


def on_feed(valkey: str, scenario: Callable[[aioredis.Redis, ChannelFeed[str], str], Awaitable[None]],
            size: int = 100) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(valkey)
        channel = f"feed-{uuid.uuid4().hex[:8]}"
        feed = ChannelFeed(client, channel, decode, size)
        try:
            await scenario(client, feed, channel)
        finally:
            await feed.close()
            await client.aclose()

    asyncio.run(main())


def test_one_subscription_serves_every_follower_in_order(valkey: str) -> None:
    async def scenario(client: aioredis.Redis, feed: ChannelFeed[str], channel: str) -> None:
        before = await pubsub_ids(client)
        everything = [await feed.follow(lambda m: True) for _ in range(50)]
        odd = await feed.follow(lambda m: int(m) % 2 == 1)
        assert len(await pubsub_ids(client) - before) == 1  # one connection for all 51
        await client.publish(channel, "foreign")  # decoded to None: nobody gets it
        for n in range(10):
            await client.publish(channel, str(n))
        for follower in everything:
            assert await drain(follower, 10) == [str(n) for n in range(10)]
        assert await drain(odd, 5) == ["1", "3", "5", "7", "9"]
        assert await odd.next(0.1) is None  # nothing more: a timeout, not an error

    on_feed(valkey, scenario)


def test_a_keyed_feed_offers_each_message_to_the_followers_of_its_key_only(valkey: str) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(valkey)
        channel = f"feed-{uuid.uuid4().hex[:8]}"
        # the gateway's shape: "<key> <n>"; a message goes to the followers of its key
        feed: ChannelFeed[str] = ChannelFeed(client, channel, decode, 100, key=lambda m: m.split()[0])
        try:
            with pytest.raises(AssertionError, match="names a key"):  # a programming error
                await feed.follow(lambda m: True)
            a1, a2 = await feed.follow(lambda m: True, key="a"), await feed.follow(lambda m: True, key="a")
            b = await feed.follow(lambda m: not m.endswith("0"), key="b")  # wants still filters
            for n in range(3):
                await client.publish(channel, f"a {n}")
                await client.publish(channel, f"b {n}")
            assert await drain(a1, 3) == await drain(a2, 3) == ["a 0", "a 1", "a 2"]
            assert await drain(b, 2) == ["b 1", "b 2"]
            assert await b.next(0.1) is None
            a1.close()
            a1.close()  # idempotent
            assert feed.keyed == {"a": {a2}, "b": {b}}
            a2.close()
            b.close()
            assert feed.keyed == {} and feed.followers == set()
        finally:
            await feed.close()
            await client.aclose()

    asyncio.run(main())


def test_a_slow_follower_is_dropped_and_the_others_get_everything(valkey: str) -> None:
    async def scenario(client: aioredis.Redis, feed: ChannelFeed[str], channel: str) -> None:
        slow, quick = await feed.follow(lambda m: True), await feed.follow(lambda m: True)
        got: list[str] = []

        async def read_quickly() -> None:
            got.extend(await drain(quick, 20))

        reader = asyncio.create_task(read_quickly())
        for n in range(20):
            await client.publish(channel, str(n))
        await asyncio.wait_for(reader, 5)
        assert got == [str(n) for n in range(20)]
        with pytest.raises(FellBehind) as failure:
            await slow.next(1.0)  # it never read: queue of 4 full, then dropped
        assert failure.value.limit == 4
        assert slow not in feed.followers and quick in feed.followers

    on_feed(valkey, scenario, size=4)


def test_a_broken_subscription_ends_every_follower_and_the_next_follow_resubscribes(
        valkey: str) -> None:
    async def scenario(client: aioredis.Redis, feed: ChannelFeed[str], channel: str) -> None:
        before = await pubsub_ids(client)
        followers = [await feed.follow(lambda m: True) for _ in range(3)]
        (ours,) = await pubsub_ids(client) - before
        await client.client_kill_filter(_id=ours)
        # whether redis-py reconnects (what was sent meanwhile is lost) or gives up
        for follower in followers:
            with pytest.raises(StoreError, match="broke|failed"):
                while True:
                    await follower.next(0.5)
        fresh = await feed.follow(lambda m: True)
        await client.publish(channel, "after")
        assert await drain(fresh, 1) == ["after"]

    on_feed(valkey, scenario)


def test_follow_without_redis_is_a_store_error_and_close_is_quiet() -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
        feed = ChannelFeed(client, "nowhere", decode, 10)
        with pytest.raises(StoreError):
            await feed.follow(lambda m: True)
        with pytest.raises(StoreError):  # tried again, not a cached failure
            await feed.follow(lambda m: True)
        await feed.close()
        await client.aclose()

    asyncio.run(main())


def test_close_ends_followers_and_gives_the_connection_back(valkey: str) -> None:
    async def scenario(client: aioredis.Redis, feed: ChannelFeed[str], channel: str) -> None:
        before = await pubsub_ids(client)
        follower = await feed.follow(lambda m: True)
        waiting = asyncio.create_task(follower.next(30.0))
        # one turn of the loop, not a pause: the task runs until it waits on its empty queue
        # (nothing in next() awaits before that)
        await asyncio.sleep(0)
        assert not waiting.done()
        await feed.close()
        with pytest.raises(StoreError, match="shutting down"):
            await asyncio.wait_for(waiting, 2)
        assert await pubsub_ids(client) == before

    on_feed(valkey, scenario)
