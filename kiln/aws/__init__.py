"""Publishing role images to AWS: the raw disk goes up as an EBS snapshot through the EBS direct
APIs (no S3 bucket, no import role), then becomes an AMI. One concern per module:

- image.py      which file is published and its sha256 (from the build manifest, checked while reading)
- blocks.py     512 KiB blocks of a file, zero-block detection, the per-block and aggregate checksums
- bootmode.py   the boot mode the disk supports, read from its partition table
- calls.py      the botocore client config and the bounded retry/backoff around every AWS call
- snapshot.py   StartSnapshot, PutSnapshotBlock (several in flight), CompleteSnapshot, wait
- ami.py        RegisterImage, tags, lookup by image sha256, clean-up of what a failed run created
- cli.py        `./inv upload-ami`: progress bar and operator messages

The tests and bench/ami.py run these against a moto server on loopback (tests/moto_server.py).
"""
