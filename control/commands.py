"""Checks on a command before any engine sees it. Pure."""

from __future__ import annotations

from crowdflow.records import AuditEntry, Command


def too_late(cmd: Command, now: float, max_age_s: float) -> str | None:
    """Why a command must not act because it arrived too late, or None.

    A command queued through an outage (dashboard → Redis → control) would otherwise act,
    minutes later, on a situation its sender never saw."""
    age = now - cmd.issued_at
    if age > max_age_s:
        return (f"issued_at: arrived {age:.0f} s after it was issued (limit {max_age_s:g} s); "
                f"not applied — look at the situation now and send it again if still wanted")
    return None


def refusal_audit(cmd: Command, now: float, error: str) -> AuditEntry:
    return AuditEntry(id=f"a-{int(now * 1000)}-{cmd.id[:8]}-late", at=now, actor=cmd.user, role=cmd.role,
                      action="refuse", plan_id=cmd.plan_id, recommendation_id=cmd.recommendation_id,
                      command_id=cmd.id, reason=f"{cmd.kind}: {error}")
