"""The order book: one order per post per measure that comes into force, withdrawn when the
measure ends, answered acknowledged → in place (or cannot, with a reason); dispatch response
per evening."""

from __future__ import annotations

from control.orders import OrderBook
from crowdflow.dispatch import evening_of, summarise
from crowdflow.records import Command, InForce, MeasureInForce
from crowdflow.site import StaffingAction, TrafficCutoffAction

T0 = 1_790_000_000.0  # 2026-09-21 22:13 Asia/Shanghai


def inforce(*measures) -> InForce:
    return InForce(mode="normal", measures=list(measures), updated_at=T0)


STAFF = MeasureInForce(action=StaffingAction(type="staffing", post="post-bridge-mid", headcount=16), source="plan",
                       plan_id="bridge", level="III", since=T0, by="张伟", posts=["post-bridge-mid"])
CUT = MeasureInForce(action=TrafficCutoffAction(type="traffic_cutoff", road="road-qsm-tunnel"), source="emergency",
                     since=T0, by="张伟", posts=["post-bridge-s"])


def answer(book, oid, what, user="王警官", post="post-bridge-mid", role="viewer", note=None, t=T0 + 60):
    cmd = Command(id=f"c-{what}-0000000", kind="answer_order", order_id=oid, answer=what, user=user, role=role,
                  post=post, note=note, issued_at=t)
    return book.answer(cmd, t)


def test_orders_follow_what_is_in_force():
    book = OrderBook()
    a = inforce(STAFF)
    book.update(None, a, T0)
    orders, audit = book.take_changes()
    assert [(o.post, o.action.type, o.status, o.issued_by) for o in orders] == [("post-bridge-mid", "staffing", "sent", "张伟")]
    assert [x.action for x in audit] == ["order"]
    b = inforce(STAFF, CUT)
    book.update(a, b, T0 + 5)  # only the new measure becomes an order
    orders, _ = book.take_changes()
    assert [o.post for o in orders] == ["post-bridge-s"]
    book.update(b, inforce(CUT), T0 + 9)  # the staffing measure ends: its open order is withdrawn
    orders, _ = book.take_changes()
    assert [(o.post, o.status) for o in orders] == [("post-bridge-mid", "withdrawn")]


def test_answers_and_dispatch_time():
    book = OrderBook()
    book.update(None, inforce(STAFF, CUT), T0)
    by_post = {o.post: o for o in book.orders.values()}
    oid = by_post["post-bridge-mid"].id
    assert "is for post post-bridge-mid" in answer(book, oid, "acknowledged", post="post-xsz")
    assert answer(book, oid, "acknowledged", t=T0 + 20) is None
    assert answer(book, oid, "acknowledged") == f"order {oid} is already acknowledged"
    assert answer(book, oid, "in_place", t=T0 + 200) is None
    o = book.orders[oid]
    assert o.status == "in_place" and o.acknowledged_by == "王警官" and o.acknowledged_at == T0 + 20
    assert o.in_place_s == 200.0
    cut = by_post["post-bridge-s"].id
    assert answer(book, cut, "cannot", post="post-bridge-s") == "note: say why it cannot be done"
    assert answer(book, cut, "cannot", post="post-bridge-s", note="隧道口车辆排队") is None
    assert answer(book, cut, "in_place", post="post-bridge-s") == f"order {cut} is already cannot"
    _, audit = book.take_changes()
    assert [a.in_place_s for a in audit if a.action == "order_answer" and a.reason == "in_place"] == [200.0]
    [day] = summarise(book.orders.values(), "Asia/Shanghai")
    assert day["evening"] == evening_of(T0, "Asia/Shanghai")
    assert (day["orders"], day["in_place"], day["cannot"], day["in_place_median_s"]) == (2, 1, 1, 200.0)


def test_after_midnight_counts_to_the_evening_before():
    assert evening_of(T0 + 3 * 3600, "Asia/Shanghai") == evening_of(T0, "Asia/Shanghai")


def test_closed_orders_leave_the_live_set_after_a_week():
    book = OrderBook()
    book.update(None, inforce(STAFF, CUT), T0)
    oid = next(o.id for o in book.orders.values() if o.post == "post-bridge-mid")
    answer(book, oid, "in_place", t=T0 + 100)
    assert book.prune(T0 + 86400) == []
    assert book.prune(T0 + 8 * 86400) == [oid]  # the open one (post-bridge-s) stays
    assert [o.post for o in book.orders.values()] == ["post-bridge-s"]
