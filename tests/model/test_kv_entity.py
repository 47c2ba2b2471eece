"""Key-value entities as written: the effect vocabulary, the testkits, and what a wrong class is told."""

from __future__ import annotations

from typing import ClassVar

import msgspec
import pytest

from entities.cart import Cart, CartState, CartTotal, CartTotals
from runtime import (
    ConfigError,
    Effect,
    Envelope,
    EventSourcedEntity,
    KeyValueEntity,
    Rows,
    StateDeleted,
    StateSet,
    View,
    applies,
    command,
    model_of,
    on,
)
from runtime.model.kv_entity import STATE_DELETED, STATE_SET
from runtime.testing import EntityTestKit, ViewTestKit


def test_update_stores_the_whole_state_and_delete_resets_it() -> None:
    kit = EntityTestKit(Cart, "c1")
    added = kit.when("add_item", sku="apple", quantity=2)
    assert added.event == Cart.state_set(CartState({"apple": 2})) and added.reply == added.state
    assert isinstance(added.event, StateSet) and added.event.state == CartState({"apple": 2})
    assert kit.when("checkout").reply == 2
    refused = kit.when("add_item", sku="pear", quantity=1)
    assert refused.error is not None and "checked out" in refused.error.message and refused.events == []
    cleared = kit.when("clear")
    assert isinstance(cleared.event, StateDeleted) and cleared.state == CartState() and not cleared.deleted
    assert kit.when("add_item", sku="pear", quantity=1).state == CartState({"pear": 1})  # usable again


def test_given_starts_from_a_stored_state_and_arguments_are_validated() -> None:
    kit = EntityTestKit(Cart).given(Cart.state_set(CartState({"fig": 1})))
    assert kit.when("get").reply == CartState({"fig": 1})
    bad = kit.when("add_item", sku="fig", quantity=0)
    assert bad.error is not None and bad.error.code == "invalid" and "quantity" in bad.error.message


def test_the_state_events_are_stored_under_system_names_with_the_state_typed() -> None:
    model = model_of(Cart)
    set_cls, deleted_cls = Cart.state_events()
    assert model.codec.spec(Cart.state_set(CartState())).name == STATE_SET
    assert model.codec.spec(Cart.state_deleted()).name == STATE_DELETED
    assert model.codec.encode(Cart.state_set(CartState({"a": 1}))) == b'{"state":{"items":{"a":1},"checked_out":false}}'
    assert model.last_wins and model.snapshot_every == 16
    assert issubclass(set_cls, StateSet) and issubclass(deleted_cls, StateDeleted)


def test_a_view_handles_the_state_events_with_the_testkit() -> None:
    kit = ViewTestKit(CartTotals)
    kit.given(Cart.state_set(CartState({"a": 2, "b": 1})), entity_id="c1")
    kit.given(Cart.state_set(CartState({"a": 5}, checked_out=True)), entity_id="c2")
    assert kit.get("c1") == CartTotal(3) and kit.get("c2") == CartTotal(5, checked_out=True)
    kit.given(Cart.state_deleted(), entity_id="c1")
    assert kit.get("c1") is None and [k for k, _ in kit.scan()] == ["c2"]


class Prefs(msgspec.Struct, frozen=True):
    theme: str = "light"


class Preferences(KeyValueEntity[Prefs], name="prefs"):
    initial = Prefs()

    @command
    def set_theme(self, prefs: Prefs, theme: str) -> Effect[None]:
        return self.update(Prefs(theme))

    @command
    def reset(self, prefs: Prefs) -> Effect[str]:
        return self.delete().reply("reset")


class Changes(View[CartTotal], name="kv_changes", sources=[Cart, Preferences]):
    """Two key-value sources: `StateSet[X]` picks one, plain `StateDeleted` takes both."""

    @on
    def theme(self, rows: Rows[CartTotal], e: StateSet[Prefs], env: Envelope) -> None:
        rows.put(f"prefs/{env.entity_id}", CartTotal(len(e.state.theme)))

    @on
    def cart(self, rows: Rows[CartTotal], e: StateSet[CartState], env: Envelope) -> None:
        rows.put(f"cart/{env.entity_id}", CartTotal(sum(e.state.items.values())))

    @on
    def gone(self, rows: Rows[CartTotal], e: StateDeleted, env: Envelope) -> None:
        rows.delete(f"{env.entity_type}/{env.entity_id}")


def test_two_key_value_sources_of_one_view_stay_apart() -> None:
    kit = ViewTestKit(Changes)
    kit.given(Preferences.state_set(Prefs("dark")), entity_id="ann")
    kit.given(Cart.state_set(CartState({"a": 3})), entity_id="c1")
    assert kit.get("prefs/ann") == CartTotal(4) and kit.get("cart/c1") == CartTotal(3)
    kit.given(Preferences.state_deleted(), entity_id="ann")
    assert kit.get("prefs/ann") is None and kit.get("cart/c1") == CartTotal(3)
    assert EntityTestKit(Preferences).when("reset").reply == "reset"


def test_a_view_annotating_a_state_type_no_source_has_is_refused() -> None:
    class Wrong(View[CartTotal], name="wrong_kv", sources=[Cart]):
        @on
        def theme(self, rows: Rows[CartTotal], e: StateSet[Prefs]) -> None:
            pass

    with pytest.raises(ConfigError, match="annotate the event with one of its sources' events"):
        Wrong.table()


def test_a_wrong_key_value_class_is_told_what_is_wrong() -> None:
    class NoInitial(KeyValueEntity[Prefs], name="no_initial"):
        pass

    class NoneInitial(KeyValueEntity[Prefs], name="none_initial"):
        initial: ClassVar[Prefs | None] = None

    class WrongInitial(KeyValueEntity[Prefs], name="wrong_initial"):
        initial = CartState()

    class WithApplies(KeyValueEntity[Prefs], name="with_applies"):
        initial = Prefs()

        @applies
        def changed(self, prefs: Prefs, e: Prefs) -> Prefs:
            return e

    for cls, says in [
        (NoInitial, "has no `initial` state"),
        (NoneInitial, "initial is None"),
        (WrongInitial, "not Prefs"),
        (WithApplies, "has no @applies methods"),
    ]:
        with pytest.raises(ConfigError, match=says):
            model_of(cls)

    class Persists(KeyValueEntity[Prefs], name="persists"):
        initial = Prefs()

        @command
        def bad(self, prefs: Prefs) -> Effect[None]:
            return self.persist(Prefs())

    with pytest.raises(ConfigError, match="persists events: a KeyValueEntity stores whole states"):
        model_of(Persists)


def test_an_event_sourced_entity_is_unchanged() -> None:
    class Counter(EventSourcedEntity[int], name="kv_counter_control"):
        initial = 0

        @command
        def get(self, n: int) -> Effect[int]:
            return self.reply(n)

    model = model_of(Counter)
    assert not model.last_wins and model.snapshot_every == 100
