"""A TCP proxy in front of the test session's Redis, to make its connections fail."""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    """A TCP proxy to Redis whose open connections can go silent (``silence``: bytes are
    dropped both ways and nothing is closed, as when a peer is lost without a reset; those
    opened afterwards work), or be cut (``cut``: closed, and new ones closed at once, until
    ``restore``), as when Redis is out of reach for a while."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._live: list[list[bool]] = []  # one flag per connection: still forwarding
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self._cut = False

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    def silence(self) -> None:
        for flag in self._live:
            flag[0] = False

    def cut(self) -> None:
        self._cut = True
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def restore(self) -> None:
        self._cut = False

    async def close(self) -> None:
        self._cut = True  # a connection accepted from now on is closed at once
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.close()
            return
        self._writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers.append(up_writer)
        if self._cut:  # cut while it connected
            writer.close()
            up_writer.close()
            return
        flag = [True]
        self._live.append(flag)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink, flag))
            self._pumps.add(pump)

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, flag: list[bool]
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if flag[0]:
                    sink.write(data)
                    await sink.drain()
