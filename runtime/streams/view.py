"""Views: read models kept up to date from entity streams, queryable by key.

```python
class AuthorPosts(msgspec.Struct):
    author: str
    posts: int = 0

class PostsByAuthor(View[AuthorPosts], name="posts_by_author", sources=[Post]):
    @on
    def published(self, rows: Rows[AuthorPosts], e: Published) -> None:
        row = rows.get(e.author) or AuthorPosts(e.author)
        rows.put(e.author, msgspec.structs.replace(row, posts=row.posts + 1))
```

Each view is a durable JetStream consumer per source stream. A batch of events
is applied in one store transaction together with the view's checkpoint, so
every event's effect lands exactly once even when JetStream redelivers; on
start the consumer is recreated at the position after that checkpoint, so the
view's own store, not the server's ack state, decides where it resumes. A view
added later starts at the beginning of its streams, so history flows into the
new feature; `rebuild` drops the rows and does it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

import anyio
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ..model.errors import ConfigError, EventDecodeError
from ..wire.protocol import envelope_from_message
from ._pull import delete_durable, stream_sequence
from ._runner import StreamResolver, StreamRunner
from .handlers import Handler, HandlerTable, Subscriber
from .view_store import RawRows, ViewStore

R = TypeVar("R")

log = structlog.get_logger("memoir.view")


class Rows(Generic[R]):
    """A view's rows inside one batch: reads see the batch's own writes."""

    def __init__(self, raw: RawRows, decoder: msgspec.json.Decoder[R], encoder: msgspec.json.Encoder) -> None:
        self._raw = raw
        self._decoder = decoder
        self._encoder = encoder
        self._cache: dict[str, R | None] = {}
        self._dirty: set[str] = set()

    def get(self, key: str) -> R | None:
        if key not in self._cache:
            data = self._raw.get(key)
            self._cache[key] = None if data is None else self._decoder.decode(data)
        return self._cache[key]

    def put(self, key: str, row: R) -> None:
        self._cache[key] = row
        self._dirty.add(key)

    def delete(self, key: str) -> None:
        self._cache[key] = None
        self._dirty.add(key)

    def writes(self) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for key in self._dirty:
            row = self._cache[key]
            out[key] = None if row is None else self._encoder.encode(row)
        return out


class View(Subscriber, Generic[R]):
    """Base class of a view. Subclass with `name=`, `sources=[EntityClass, ...]` and a row type, View[Row]."""

    kind = "view"
    row_type: ClassVar[type]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for base in getattr(cls, "__orig_bases__", ()):
            args = getattr(base, "__args__", ())
            if args and isinstance(args[0], type):
                cls.row_type = args[0]

    @classmethod
    def check(cls, table: HandlerTable) -> None:
        if not isinstance(getattr(cls, "row_type", None), type):
            raise ConfigError(f"view {cls.__name__}: declare the row type, View[MyRow]")
        if any(h.is_async for h in table.handlers.values()):
            raise ConfigError(f"view {cls.__name__}: handlers update rows and must not be async")


class ViewQuery(Generic[R]):
    """Read a view's rows: by key, or in key order."""

    def __init__(self, view: type[View[R]], store: ViewStore) -> None:
        self.view = view
        self.store = store
        self._decoder: msgspec.json.Decoder[R] = msgspec.json.Decoder(view.row_type)

    async def get(self, key: str) -> R | None:
        data = await self.store.get(self.view.name, key)
        return None if data is None else self._decoder.decode(data)

    async def scan(self, *, after: str = "", limit: int = 100) -> list[tuple[str, R]]:
        return [
            (k, self._decoder.decode(v)) for k, v in await self.store.scan(self.view.name, after=after, limit=limit)
        ]

    async def all(self) -> dict[str, R]:
        out: dict[str, R] = {}
        after = ""
        while page := await self.scan(after=after, limit=1000):
            out.update(page)
            after = page[-1][0]
        return out


class ViewRunner(StreamRunner):
    """Keeps one view up to date: one pull loop per source stream, one store transaction per batch."""

    def __init__(
        self,
        view: type[View[Any]],
        store: ViewStore,
        nc: NATS,
        *,
        prefix: str,
        batch: int = 500,
        streams: StreamResolver | None = None,
    ) -> None:
        self.table = view.table()
        super().__init__(view.name, self.table.sources, nc, prefix=prefix, streams=streams)
        self.view = view
        self.instance = view()
        self.store = store
        self.batch = batch
        self.query = ViewQuery(view, store)
        self.applied = 0
        self.last_recorded_at = 0  # the recorded time of the newest event applied (view lag)
        self._lock = anyio.Lock()  # two source streams must not interleave their read-modify-writes
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(view.row_type)
        self._encoder = msgspec.json.Encoder()
        self._checkpoints: dict[str, int] = {}

    async def run(self) -> None:
        self._checkpoints = await self.store.checkpoints(self.view.name)
        await super().run()

    def source_key(self, entity_type: str) -> str:
        """The checkpoint's key: one per stream and type (the JetStream journal keeps all types in one stream)."""
        return f"{self.streams(entity_type)}:{entity_type}"

    def pull_options(self, entity_type: str) -> dict[str, Any]:
        key = self.source_key(entity_type)

        async def handle(msgs: list[Msg]) -> None:
            await self._apply(key, msgs)
            await msgs[-1].ack()  # AckAll: everything up to here

        return {"handle": handle, "batch": self.batch, "start_seq": self._checkpoints.get(key, 0) + 1}

    async def _apply(self, stream: str, msgs: list[Msg]) -> None:
        seen = self._checkpoints.get(stream, 0)
        work: list[tuple[Handler, msgspec.Struct, Any]] = []
        last = seen
        newest = 0
        for msg in msgs:
            seq = stream_sequence(msg)
            if seq <= seen:
                continue  # a redelivery of something already applied
            last = max(last, seq)
            try:
                env = envelope_from_message(msg.subject, msg.headers, msg.data)
                found = self.table.decode(env)
            except (ValueError, EventDecodeError) as exc:
                log.error("event skipped by view", view=self.view.name, stream=stream, seq=seq, error=str(exc))
                continue
            newest = max(newest, env.recorded_at)
            if found is not None:
                work.append((found[1], found[0], env))
        if last == seen:
            return

        def transaction(raw: RawRows) -> tuple[Mapping[str, bytes | None], Mapping[str, int]]:
            rows: Rows[Any] = Rows(raw, self._decoder, self._encoder)
            for handler, event, env in work:
                args = (self.instance, rows, event, env) if handler.wants_envelope else (self.instance, rows, event)
                handler.fn(*args)
            return rows.writes(), {stream: last}

        async with self._lock:
            await self.store.transact(self.view.name, transaction)
        self._checkpoints[stream] = last
        self.applied += len(work)
        self.last_recorded_at = max(self.last_recorded_at, newest)

    def checkpoint(self, entity_type: str) -> int:
        """The last stream sequence this view applied from `entity_type`'s events."""
        return self._checkpoints.get(self.source_key(entity_type), 0)

    async def rebuild(self) -> None:
        """Forget everything: rows, checkpoints and the durable consumers. Run again to replay history."""
        await self.store.reset(self.view.name)
        for entity_type in self.table.sources:
            await delete_durable(self.js, self.streams(entity_type), entity_type, self.view.name)
        self._checkpoints = {}
