"""The join step: one function per bundle join kind, each proving the role really took its place."""

from __future__ import annotations

from typing import assert_never

from firstboot.errors import StepFailed
from firstboot.steps.context import Outcome, StepContext
from firstboot.steps.join import db, tiers
from firstboot.steps.join.sql import Server, SqlError
from kiln.bundle import DbPrimaryJoin, DbReplicaJoin, LbJoin, ServiceJoin


def join(ctx: StepContext) -> Outcome:
    if not ctx.live:
        return Outcome("skipped (offline)")
    spec = ctx.bundle.join
    match spec:
        case LbJoin():
            return Outcome(tiers.join_lb(spec, ctx.tuning.join_deadline))
        case ServiceJoin():
            return Outcome(tiers.join_service(spec, ctx.tuning.join_deadline))
        case DbPrimaryJoin() | DbReplicaJoin():
            local = Server(socket=ctx.tuning.db_socket)
            try:
                if isinstance(spec, DbPrimaryJoin):
                    return Outcome(db.join_primary(spec, ctx.secret, local))
                return Outcome(db.join_replica(spec, ctx.secret, local, repoint=ctx.converging))
            except SqlError as e:
                raise StepFailed(
                    f"{spec.kind}: {e}", "check mariadb on this host (journalctl -u mariadb), then run `firstboot run`"
                ) from None
        case _:
            assert_never(spec)
