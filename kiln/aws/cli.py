"""`./inv upload-ami`: publish images/<role>/<role>.raw as an AMI, with a progress bar and plain messages."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, NoRegionError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kiln.aws.ami import Clients, PublishError, publish
from kiln.aws.blocks import block_count
from kiln.aws.bootmode import NotBootable
from kiln.aws.calls import AwsCallError, Caller, RetryPolicy
from kiln.aws.image import ImageError, locate
from kiln.build import manifest
from kiln.model import InvalidRoles
from kiln.project import ROOT, Project
from kiln.secrets import SecretMissing, SecretStore

DEFAULT_IMAGES = ROOT / "images"


def make_clients(
    region: str | None, endpoint_url: str | None, *, workers: int = 16, policy: RetryPolicy | None = None
) -> Clients:
    """The ebs and ec2 clients (one each, shared by the upload threads: boto3 clients are thread-safe)."""
    policy = policy or RetryPolicy()
    session = boto3.session.Session(region_name=region)
    config = policy.botocore_config(pool=workers + 2)
    ebs = session.client("ebs", endpoint_url=endpoint_url, config=config)
    ec2 = session.client("ec2", endpoint_url=endpoint_url, config=config)
    return Clients(ebs=ebs, ec2=ec2, caller=Caller(policy))


def _mib(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB" if n < 10 * 1024**3 else f"{n / 1024**3:.1f} GiB"


def _check_baked(directory: Path, role: str, project: Project) -> None:
    """ImageError when the image's manifest says it is baked for another cluster than the project's."""
    data = manifest.read(directory) or {}
    if manifest.BAKED not in data:
        return  # built by an older kiln: it cannot tell
    try:
        expected = manifest.baked(project.cluster(), SecretStore(project.secrets), project.roles_shown)
    except (InvalidRoles, SecretMissing, FileNotFoundError) as e:
        raise ImageError(
            f"cannot tell whether the {role} image is baked for {project.roles_shown}'s cluster: {e}"
        ) from None
    other = manifest.built_for_another(data, expected)
    if other is not None:
        raise ImageError(
            f"the {role} image cannot join {project.roles_shown}'s cluster ({other}): rebuild it with "
            f"./inv build --role {role} --roles {project.roles_shown}"
        )


def upload_ami(
    role: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    name: str | None = None,
    wait: bool = True,
    images: str | os.PathLike[str] | None = None,
    workers: int = 16,
    project: Project | None = None,
) -> int:
    """`project`: the cluster (--roles) the image must be baked for; an image baked for another is refused."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    out = Console(highlight=False, soft_wrap=True)
    try:
        image = locate(Path(images) if images else DEFAULT_IMAGES, role)
        if project is not None:
            _check_baked(image.path.parent, role, project)
        clients = make_clients(region, endpoint_url, workers=workers)
    except ImageError as e:
        err.print(f"upload-ami: {e}")
        return 1
    except NoRegionError:
        err.print("upload-ami: no AWS region: pass --region or set AWS_REGION (or a region in ~/.aws/config)")
        return 1
    where = clients.ec2.meta.region_name + (f" at {endpoint_url}" if endpoint_url else "")
    out.print(f"{role}: {os.path.relpath(image.path)} ({_mib(image.size)}, sha256 {image.sha256[:16]}…) → {where}")
    total = block_count(image.size)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("blocks ({task.fields[sent]} sent, {task.fields[skipped]} zero)"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    task = bar.add_task("upload", total=total, sent=0, skipped=0, start=False)
    counts = {"sent": 0, "skipped": 0}
    lock = threading.Lock()

    def progress(_index: int, sent: bool) -> None:  # called from the upload threads
        with lock:
            counts["sent" if sent else "skipped"] += 1
            bar.update(task, advance=1, sent=counts["sent"], skipped=counts["skipped"])

    def step(message: str) -> None:  # the snapshot's start is the first step with a bar to show
        if message.startswith("note:"):
            err.print(message)
            return
        if not bar.live.is_started:
            bar.start()
            bar.start_task(task)
        bar.console.print(message)

    started = time.monotonic()
    try:
        try:
            result = publish(clients, image, name=name, wait=wait, workers=workers, progress=progress, on_step=step)
        finally:
            bar.stop()
    except (NotBootable, PublishError, AwsCallError, BotoCoreError) as e:
        err.print(f"upload-ami: {e}")
        if "NoCredentialsError" in str(e):
            err.print(
                "upload-ami: no AWS credentials found (environment, ~/.aws/credentials, SSO or an instance profile)"
            )
        return 1
    if result.reused:
        out.print(f"{result.image_id} ({result.name}, {result.state}) already holds this image: nothing uploaded")
        return 0
    stats = result.stats
    assert stats is not None
    seconds = time.monotonic() - started
    out.print(
        f"snapshot {result.snapshot_id}: {stats.sent} blocks sent ({_mib(stats.bytes_sent)}), "
        f"{stats.skipped} zero blocks skipped, {image.size / 1e6 / stats.seconds:.1f} MB/s of image, "
        f"{clients.caller.retries} retries"
    )
    out.print(
        f"{result.image_id} {result.name}: {result.state}, {result.boot_mode}, x86_64, ENA, IMDSv2, gp3 root /dev/xvda "
        f"({seconds:.1f}s in all)"
    )
    return 0
