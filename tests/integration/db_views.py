"""The data tier as the failover monitor and the backup runner report it, for the server's tests: a primary and
its replica (3 s behind) as one look saw them, and a finished backup's manifest."""

from __future__ import annotations

from kiln.db.replication import Seen

PRIMARY = Seen("db1", "10.10.0.41", answered=True, read_only=False, binlog_pos="0-2-1187", semi_sync=True)
REPLICA = Seen(
    "db2",
    "10.10.0.42",
    answered=True,
    binlog_pos="0-2-1185",
    slave_pos="0-2-1185",
    master_host="10.10.0.41",
    io_running="Yes",
    sql_running="Yes",
    lag=3,
)
MANIFEST = {
    "id": "20261201T110000Z-db2",
    "host": "db2",
    "started": "2026-12-01T11:00:00Z",
    "seconds": 1.9,
    "gtid": "0-1-1150",
    "raw_bytes": 30_408_704,
    "stored_bytes": 1_677_722,
    "sha256": "ab" * 32,
}
