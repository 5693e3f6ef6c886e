"""The join step: one function per bundle join kind, each proving the role really took its place."""

from __future__ import annotations

from firstboot.errors import StepFailed
from firstboot.steps.context import Outcome, StepContext


def join(ctx: StepContext) -> Outcome:
    if not ctx.live:
        return Outcome("skipped (offline)")
    spec = ctx.bundle.get("join") or {}
    kind, params = spec.get("kind"), spec.get("params", {})
    if kind in ("db-primary", "db-replica"):
        from firstboot.join import db
        from firstboot.join.sql import Server, SqlError

        local = Server(socket=ctx.tuning.db_socket)
        try:
            if kind == "db-primary":
                return Outcome(db.join_primary(params, ctx.secret, local))
            return Outcome(db.join_replica(params, ctx.secret, local))
        except SqlError as e:
            raise StepFailed(
                f"{kind}: {e}", "check mariadb on this host (journalctl -u mariadb), then run `firstboot run`"
            ) from None
    from firstboot.join import tiers

    joins = {"lb": tiers.join_lb, "web": tiers.join_web, "app": tiers.join_app}
    if kind not in joins:
        raise StepFailed(f"unknown join kind {kind!r}", "update the agent (./inv freeze, rebuild the image)")
    return Outcome(joins[kind](params, ctx.tuning.join_deadline))
