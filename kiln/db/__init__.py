"""The data tier's day-2 work: backups of a replica to an S3 store, binlog archiving, tested restores.

gtid.py      GTID positions (MariaDB's domain-server-seq lists): parse, compare, merge
seal.py      the stored form: zstd-compressed, then AES-256-GCM in authenticated chunks
store.py     the S3 bucket: objects, manifests, listings (boto3)
source.py    the db host a backup is taken from: commands over ssh (or here, in tests), SQL as root
backup.py    base backups (mariadb-backup, streamed), checkpoints, binlog archiving, retention
restore.py   restore-test: a backup and binlogs into a scratch mariadbd, compared with a checkpoint
cli.py       ./inv db ACTION
"""
