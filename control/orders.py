"""Orders to posts: each measure that comes into force goes to the phones of the posts it
names, and the officers' answers come back. Pure.

:class:`OrderBook` compares each new :class:`InForce` record with the one before: a measure
that appears (or a staffing order whose headcount changes) becomes one :class:`Order` per
post it names; a measure that leaves force withdraws its open orders. An officer answers
``acknowledged``, then ``in_place`` (or ``cannot`` with a reason); ``in_place_s`` — from the
commander's confirmation to "in place" — is the real dispatch response time. Every order
and answer is an :class:`AuditEntry`.
"""

from __future__ import annotations

from collections.abc import Mapping

from crowdflow.dispatch import OPEN
from crowdflow.records import AuditEntry, Command, InForce, MeasureInForce, Order, OrderAnswer

KEEP_CLOSED_S = 7 * 86400  # answered or withdrawn orders stay in <p>:orders this long (the audit keeps all)
NEXT = {"acknowledged": ("sent",), "in_place": ("sent", "acknowledged"), "cannot": ("sent", "acknowledged")}


def _key(m: MeasureInForce, post: str) -> str:
    a = m.action
    return f"{post}|{a.model_dump_json()}"


class OrderBook:
    def __init__(self):
        self.orders: dict[str, Order] = {}
        self._seq = 0
        self._changed: set[str] = set()
        self._audit: list[AuditEntry] = []

    def restore(self, orders: Mapping[str, Order]) -> None:
        self.orders.update(orders)

    def update(self, before: InForce | None, after: InForce, now: float) -> None:
        """Send orders for measures that came into force, withdraw those that left."""
        old = {(_key(m, p)) for m in (before.measures if before else []) for p in m.posts}
        new = {}
        for m in after.measures:
            for p in m.posts:
                new[_key(m, p)] = (m, p)
        for k, (m, post) in new.items():
            if k in old:
                continue
            self._seq += 1
            o = Order(id=f"o-{int(now * 1000)}-{self._seq}", post=post, action=m.action, plan_id=m.plan_id,
                      level=m.level, source=m.source, issued_at=m.since, issued_by=m.by)
            self._put(o)
            self._log(now, m.by, "system", "order", o, f"{o.action.type} → {post}")
        gone = old - set(new)
        for o in list(self.orders.values()):
            if o.status in OPEN and f"{o.post}|{o.action.model_dump_json()}" in gone:
                w = o.model_copy(update=dict(status="withdrawn",
                                             answers=[*o.answers, OrderAnswer(status="withdrawn", by="system", at=now)]))
                self._put(w)

    def answer(self, cmd: Command, now: float) -> str | None:
        """Apply an officer's answer; the error, or None."""
        o = self.orders.get(cmd.order_id or "")
        if o is None:
            return f"order_id: no order {cmd.order_id!r}"
        if cmd.role == "viewer" and cmd.post != o.post:
            return f"order {o.id} is for post {o.post}; {cmd.user} is at {cmd.post or 'no post'}"
        if o.status not in NEXT[cmd.answer]:
            return f"order {o.id} is already {o.status}"
        if cmd.answer == "cannot" and not (cmd.note or "").strip():
            return "note: say why it cannot be done"
        upd = dict(status=cmd.answer, answers=[*o.answers, OrderAnswer(status=cmd.answer, by=cmd.user, at=now,
                                                                       note=cmd.note)])
        if o.acknowledged_at is None:  # "in place" or "cannot" also says it was received
            upd.update(acknowledged_by=cmd.user, acknowledged_at=now)
        if cmd.answer == "in_place":
            upd.update(in_place_at=now, in_place_s=round(now - o.issued_at, 1))
        o = o.model_copy(update=upd)
        self._put(o)
        self._log(now, cmd.user, cmd.role, "order_answer", o, f"{cmd.answer}{': ' + cmd.note if cmd.note else ''}",
                  cmd=cmd)
        return None

    def _put(self, o: Order) -> None:
        self.orders[o.id] = o
        self._changed.add(o.id)

    def _log(self, now, actor, role, action, o: Order, reason: str, cmd: Command | None = None) -> None:
        self._seq += 1
        self._audit.append(AuditEntry(id=f"a-{int(now * 1000)}-o{self._seq}", at=now, actor=actor, role=role,
                                      action=action, plan_id=o.plan_id, level_to=o.level, order_id=o.id, post=o.post,
                                      command_id=cmd.id if cmd else None, reason=reason,
                                      in_place_s=o.in_place_s if action == "order_answer" else None))

    def prune(self, now: float) -> list[str]:
        """Drop closed orders older than a week from the live set; returns their ids."""
        old = [o.id for o in self.orders.values()
               if o.status not in OPEN and now - o.issued_at > KEEP_CLOSED_S]
        for oid in old:
            del self.orders[oid]
            self._changed.discard(oid)
        return old

    def take_changes(self) -> tuple[list[Order], list[AuditEntry]]:
        out = [self.orders[i] for i in sorted(self._changed) if i in self.orders]
        audit, self._audit, self._changed = self._audit, [], set()
        return out, audit
