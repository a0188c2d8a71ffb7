"""Recording turns: every answer is written when its generation ends, whether or not anyone still reads it.

How it works: a route stores the question and a ``streaming`` placeholder for the answer
(:meth:`TurnRecorder.begin`), starts the generation, and hands the stream to
:meth:`TurnRecorder.follow`. That starts a task which reads the stream's log from the start, right
beside the HTTP reader but not as a reader of the stream (so it never keeps alive a generation the
disconnect policy would cancel), until the log's ``Finish``: complete, failed, cancelled by Stop, by
the last reader leaving, or by shutdown. Then it writes the answer. Should the generation's task end
without logging a ``Finish``, the text read so far is written as an ``internal`` error.

Shutdown order matters: the hub cancels its generations first (each logs its end), then
:meth:`TurnRecorder.aclose` waits for the pending writes and closes the store.

The server opens the store on first use (:class:`LazyRecorder`): SQLAlchemy and its driver cost a
process about 18 MB, which a gateway that never stores a conversation should not pay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from sluiceway.conversations.records import Answer, Turn, answer_from_events
from sluiceway.conversations.store import ConversationStore
from sluiceway.errors import SluicewayError, StoreUnavailableError
from sluiceway.events import Event
from sluiceway.streams.hub import Stream
from sluiceway.streams.log import StreamLog

logger = logging.getLogger("sluiceway.conversations")

FINISH_GRACE_S = 2.0
"""How long the recorder waits for the log's ``Finish`` after the generation's task has ended."""


class TurnRecorder:
    """Stores questions and, once their generations end, answers; owns the store it writes to."""

    def __init__(self, store: ConversationStore, *, write_attempts: int = 3, retry_s: float = 0.2) -> None:
        self.store = store
        self.write_attempts = write_attempts
        self.retry_s = retry_s
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Answers still being generated or written."""
        return len(self._pending)

    async def begin(
        self,
        conversation_id: str | None,
        question: str,
        model: str,
        *,
        owner: str | None = None,
        retry: bool = False,
    ) -> Turn:
        """Store ``question`` (in a new conversation when ``conversation_id`` is ``None``); with
        ``retry``, in place of the last turn if that one asked the same and did not complete."""
        return await self.store.begin_turn(conversation_id, question, model, owner=owner, retry=retry)

    def follow(self, turn: Turn, stream: Stream) -> None:
        """Record ``stream`` as the answer of ``turn`` when it ends."""
        task = asyncio.create_task(self._record(turn, stream), name=f"record-answer-{turn.answer_id}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def fail(self, turn: Turn, error: SluicewayError) -> None:
        """Record that the answer of ``turn`` could not even start."""
        await self._write(turn, Answer("error", "", error_code=error.code))

    async def drain(self, within_s: float) -> None:
        """Wait up to ``within_s`` seconds for pending answers; abandon (and log) the rest."""
        if not self._pending:
            return
        _, late = await asyncio.wait(set(self._pending), timeout=within_s)
        for task in late:
            logger.error("answer not recorded before shutdown: %s", task.get_name())
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)

    async def aclose(self, within_s: float = 10.0) -> None:
        """Drain the pending answers (up to ``within_s`` seconds), then close the store."""
        try:
            await self.drain(within_s)
        finally:
            await self.store.aclose()

    async def _record(self, turn: Turn, stream: Stream) -> None:
        events: list[Event] = []
        try:
            await _collect(stream, events)
        except Exception:
            logger.exception("reading the answer of %s failed; storing what was read", turn.answer_id)
        await self._write(turn, answer_from_events(events))

    async def _write(self, turn: Turn, answer: Answer) -> None:
        for attempt in range(1, self.write_attempts + 1):
            try:
                if not await self.store.finish_answer(turn.answer_id, answer):
                    logger.info("answer %s not stored: it was deleted or retried", turn.answer_id)
                return
            except StoreUnavailableError:
                if attempt == self.write_attempts:
                    logger.error("answer %s lost: the store failed %d times", turn.answer_id, attempt)
                    return
                await asyncio.sleep(self.retry_s * 2 ** (attempt - 1))


async def _collect(stream: Stream, into: list[Event]) -> None:
    """Read ``stream``'s log into ``into`` until its ``Finish``, or shortly after its task ended."""
    reader = asyncio.create_task(_read_all(stream.log, into))
    ends = {reader} if stream.task is None else {reader, stream.task}
    try:
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        if not reader.done():
            await asyncio.wait({reader}, timeout=FINISH_GRACE_S)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    if not reader.cancelled():
        reader.result()  # re-raise a failure to read


async def _read_all(log: StreamLog, into: list[Event]) -> None:
    events = log.read(0)
    try:
        async for batch in events:
            into.extend(event for _, event in batch or ())
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def open_conversations(data_dir: str | Path | None, url: str | None) -> TurnRecorder:
    """The recorder over the store the settings name: ``url`` (PostgreSQL), else SQLite in ``data_dir``."""
    from sluiceway.conversations.sql import database_url, open_store  # SQLAlchemy: only when opened

    return TurnRecorder(await open_store(database_url(data_dir, url)))


class LazyRecorder:
    """The :class:`TurnRecorder`, opened by the first caller that needs it.

    Callers arriving together while it opens wait for that one opening. A failure to open (database
    unreachable, schema too new, driver missing) is logged with its cause and raised as
    :class:`~sluiceway.errors.StoreUnavailableError` (no database address in it); the next caller tries
    again. After :meth:`aclose`, callers get that error too.
    """

    def __init__(self, open_recorder: Callable[[], Awaitable[TurnRecorder]]) -> None:
        self._open_recorder = open_recorder
        self._recorder: TurnRecorder | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def for_settings(cls, data_dir: str | Path | None, url: str | None) -> LazyRecorder:
        """Open the store the settings name (see :func:`open_conversations`) when first needed."""
        return cls(lambda: open_conversations(data_dir, url))

    @property
    def opened(self) -> bool:
        """Whether the store has been opened (and not closed since)."""
        return self._recorder is not None

    async def get(self) -> TurnRecorder:
        """The recorder, opening its store if nobody has yet."""
        if self._recorder is not None:
            return self._recorder
        async with self._lock:
            if self._closed:
                raise StoreUnavailableError("the conversation store is closed: the server is shutting down")
            if self._recorder is None:
                self._recorder = await self._open()
            return self._recorder

    async def aclose(self) -> None:
        """Close the recorder if it was opened (waiting for an opening under way)."""
        async with self._lock:
            self._closed = True
            recorder, self._recorder = self._recorder, None
        if recorder is not None:
            await recorder.aclose()

    async def _open(self) -> TurnRecorder:
        try:
            return await self._open_recorder()
        except Exception as exc:
            logger.error("cannot open the conversation store: %s", exc, exc_info=exc)
            raise StoreUnavailableError(
                "the conversation store could not be opened (the server log says why); try again"
            ) from exc
