"""An encrypted entity type, a plain one, and a view over the encrypted one, for the crypto-shredding tests."""

from __future__ import annotations

import msgspec

from runtime import App, Effect, Envelope, EventSourcedEntity, Forgotten, Rows, View, applies, command, on

MARKER = "PLAINTEXT-MARKER"  # in every email: its absence from stored bytes is the test


class EmailChanged(msgspec.Struct):
    email: str


class Erased(msgspec.Struct):
    reason: str


class Profile(msgspec.Struct):
    email: str = ""
    changes: int = 0


class Person(EventSourcedEntity[Profile], name="person", encrypted=True):
    initial = Profile()
    snapshot_every = 3

    @command
    def change(self, p: Profile, email: str) -> Effect[str]:
        return self.persist(EmailChanged(email)).reply(lambda s: f"{s.email} #{s.changes}")

    @command
    def get(self, p: Profile) -> Effect[Profile]:
        return self.reply(p)

    @command
    def remind(self, p: Profile, email: str) -> Effect[None]:
        """An event and a timer in one effect: the event is sealed, the timer stays readable for the relay."""
        return self.persist(EmailChanged(email)).schedule(
            "remind", to=("note", "n1", "add"), args={"text": "hi"}, after=60
        )

    @command
    def remove(self, p: Profile) -> Effect[None]:
        return self.delete()

    @command
    def erase(self, p: Profile, reason: str) -> Effect[int]:
        """The GDPR request as a command: record why, then destroy the key."""
        return self.persist(Erased(reason)).forget().reply(lambda s: s.changes)

    @applies
    def changed(self, p: Profile, e: EmailChanged) -> Profile:
        return Profile(e.email, p.changes + 1)

    @applies
    def erased(self, p: Profile, e: Erased) -> Profile:
        return p


class Noted(msgspec.Struct):
    text: str


class Note(EventSourcedEntity[list[str]], name="note"):
    initial: list[str] = []  # noqa: RUF012 - the state's initial value, never mutated

    @command
    def add(self, notes: list[str], text: str) -> Effect[int]:
        return self.persist(Noted(text)).reply(len)

    @command
    def forget_me(self, notes: list[str]) -> Effect[None]:
        return self.persist(Noted("bye")).forget()

    @applies
    def noted(self, notes: list[str], e: Noted) -> list[str]:
        return [*notes, e.text]


class Email(msgspec.Struct):
    email: str


class EmailsView(View[Email], name="emails", sources=[Person]):
    @on
    def changed(self, rows: Rows[Email], e: EmailChanged, env: Envelope) -> None:
        rows.put(env.entity_id, Email(e.email))

    @on
    def forgotten(self, rows: Rows[Email], e: Forgotten, env: Envelope) -> None:
        rows.delete(env.entity_id)  # the signal: drop what the view holds of the entity


app = App("people", entities=[Person, Note], views=[EmailsView])
