"""Dead letters over NATS request/reply, for `memoir deadletters` and the HTTP API.

- `{prefix}.admin.deadletters.list` with `{"consumer": "…", "after": 0, "limit": 100}` → the parked
  events (`streams.dead_letters.Parked`), oldest first; `after` pages by stream sequence
- `{prefix}.admin.deadletters.show` with `{"consumer": "…", "seq": n}` → one in full, or `not_found`
- `{prefix}.admin.deadletters.replay` with `{"consumer": "…", "seq": n}` (or no `seq`: every one
  parked now) → `{"replayed": [seq, …], "failed": [{"seq", "error"}, …]}`; a replayed event is
  handled again by its consumer with its original command ids (exactly-once effects), then deleted;
  one that fails again stays parked
- `{prefix}.admin.deadletters.purge` with `{"consumer": "…"}` (or a `seq`) → `{"purged": n}`

Any member answers (a queue group): the consumer's handler sends its commands through the
member's `Sender`, which reaches each target's owner wherever it is. A consumer the app does not
declare is `unknown_consumer`.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

from ...model.errors import CommandError, ErrorCode
from ...streams.dead_letters import MAX_LIST, DeadLetters
from ...wire.protocol import encode_error, encode_result
from ._service import Service

log = structlog.get_logger("memoir.admin")

OPS = ("list", "show", "replay", "purge")

REPLAY_SECONDS = 30.0
"""How long a client waits at least for a dead-letter replay's answer: it runs the consumer's
handler once per parked event, and that handler's commands."""


class DeadLetterArgs(msgspec.Struct, forbid_unknown_fields=True):
    consumer: str
    seq: int | None = None
    after: int = 0
    limit: int = 100


class ReplayOutcome(msgspec.Struct):
    replayed: list[int]
    failed: list[dict[str, Any]]


class DeadLetterAdmin:
    """Answers the four dead-letter requests for one service."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def letters(self) -> DeadLetters:
        assert self.service.nc is not None
        return DeadLetters(self.service.nc.jetstream(), self.service.prefix)

    async def answer(self, op: str, data: bytes) -> bytes:
        """The encoded answer to `{prefix}.admin.deadletters.{op}` with payload `data`."""
        try:
            args = msgspec.json.decode(data or b"{}", type=DeadLetterArgs)
            if args.consumer not in self.service.consumers:
                known = ", ".join(sorted(self.service.consumers)) or "none"
                return encode_error(CommandError("unknown_consumer", f"no consumer {args.consumer!r} (known: {known})"))
            return encode_result(await self._run(op, args))
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            return encode_error(CommandError(ErrorCode.INVALID, f"deadletters {op}: {exc}"))
        except CommandError as exc:
            return encode_error(exc)

    async def _run(self, op: str, args: DeadLetterArgs) -> Any:
        letters = self.letters()
        if op == "list":
            if not 1 <= args.limit <= MAX_LIST:
                raise CommandError(ErrorCode.INVALID, f"limit must be between 1 and {MAX_LIST}")
            return await letters.list(args.consumer, after=args.after, limit=args.limit)
        if op == "show":
            found = await letters.show(args.consumer, self._seq(args))
            if found is None:
                raise CommandError("not_found", f"{args.consumer} has no parked event at {args.seq}")
            return found
        if op == "replay":
            return await self.replay(letters, args)
        if op == "purge":
            purged = await letters.purge(args.consumer, seq=args.seq)
            log.info("dead letters purged", consumer=args.consumer, seq=args.seq, purged=purged)
            return {"purged": purged}
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"dead letters answer {', '.join(OPS)}, not {op!r}")

    @staticmethod
    def _seq(args: DeadLetterArgs) -> int:
        if args.seq is None:
            raise CommandError(ErrorCode.INVALID, "seq is required")
        return args.seq

    async def replay(self, letters: DeadLetters, args: DeadLetterArgs) -> ReplayOutcome:
        """Each chosen parked event through its consumer again; deleted once handled."""
        runner = self.service.consumers[args.consumer]
        if args.seq is not None:
            seqs = [args.seq]
        else:
            seqs = [p.seq for p in await letters.list(args.consumer, limit=MAX_LIST)]
        outcome = ReplayOutcome(replayed=[], failed=[])
        for seq in seqs:
            env = await letters.envelope(args.consumer, seq)
            if env is None:
                if args.seq is not None:
                    raise CommandError("not_found", f"{args.consumer} has no parked event at {seq}")
                continue
            try:
                await runner.react(env)
            except Exception as exc:  # noqa: BLE001 - a handler failing again leaves the event parked
                outcome.failed.append({"seq": seq, "error": " ".join(f"{type(exc).__name__}: {exc}".split())})
                continue
            await letters.remove(seq)
            outcome.replayed.append(seq)
        log.info("dead letters replayed", consumer=args.consumer, replayed=outcome.replayed, failed=len(outcome.failed))
        return outcome
