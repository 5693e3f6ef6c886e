"""A role image as an AMI: reuse the one already tagged with the image's sha256, or upload the disk
as a snapshot and register it. What a failed run created is deleted again, or listed when that fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kiln
from kiln.aws.blocks import volume_gib
from kiln.aws.bootmode import boot_mode
from kiln.aws.calls import Caller
from kiln.aws.image import RoleImage
from kiln.aws.snapshot import Progress, UploadStats, complete_snapshot, start_snapshot, wait_completed, write_blocks

TAG_ROLE = "kiln:role"
TAG_SHA256 = "kiln:image-sha256"
TAG_VERSION = "kiln:version"
ROOT_DEVICE = "/dev/xvda"
ARCHITECTURE = "x86_64"  # the role images are Debian amd64 builds
REUSABLE = ("available", "pending")


@dataclass(frozen=True)
class Clients:
    ebs: Any
    ec2: Any
    caller: Caller


@dataclass(frozen=True)
class Published:
    image_id: str
    name: str
    state: str
    reused: bool
    snapshot_id: str | None = None
    boot_mode: str | None = None
    stats: UploadStats | None = None


class PublishError(Exception):
    """A failed publish: the failure, what was created and deleted again, and what is left to delete by hand."""

    def __init__(self, cause: BaseException, deleted: list[str], left: list[tuple[str, str]]) -> None:
        self.cause, self.deleted, self.left = cause, deleted, left
        lines = [str(cause)]
        if deleted:
            lines.append(f"deleted what this run created: {', '.join(deleted)}")
        for resource, command in left:
            lines.append(f"left behind: {resource} (delete it: {command})")
        super().__init__("\n".join(lines))


def default_name(image: RoleImage) -> str:
    return f"kiln-ami-{image.role}-{image.sha256[:16]}"


def image_tags(image: RoleImage, name: str) -> dict[str, str]:
    return {"Name": name, TAG_ROLE: image.role, TAG_SHA256: image.sha256, TAG_VERSION: kiln.__version__}


def find_existing(clients: Clients, sha256: str) -> dict[str, Any] | None:
    """This account's AMI in the region tagged with the image sha256 (newest first), if one is usable."""
    by_tag = [{"Name": f"tag:{TAG_SHA256}", "Values": [sha256]}]
    response = clients.caller.call(
        "ec2.DescribeImages", lambda: clients.ec2.describe_images(Owners=["self"], Filters=by_tag), idempotent=True
    )
    images = sorted(response.get("Images", []), key=lambda i: i.get("CreationDate", ""), reverse=True)
    usable = [i for i in images if i.get("State") in REUSABLE]
    return usable[0] if usable else None


def find_leftovers(clients: Clients, sha256: str) -> list[str]:
    """Snapshots tagged with the image sha256: with no AMI holding the image, left by runs that were killed."""
    by_tag = [{"Name": f"tag:{TAG_SHA256}", "Values": [sha256]}]
    response = clients.caller.call(
        "ec2.DescribeSnapshots",
        lambda: clients.ec2.describe_snapshots(OwnerIds=["self"], Filters=by_tag),
        idempotent=True,
    )
    return sorted(str(s["SnapshotId"]) for s in response.get("Snapshots", []))


def register_request(name: str, image: RoleImage, snapshot_id: str, mode: str, tags: dict[str, str]) -> dict[str, Any]:
    """RegisterImage's parameters: HVM x86_64, ENA, IMDSv2 only, gp3 root on /dev/xvda from the snapshot."""
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    return {
        "Name": name,
        "Description": f"kiln {image.role} role image, sha256 {image.sha256}",
        "Architecture": ARCHITECTURE,
        "VirtualizationType": "hvm",
        "BootMode": mode,
        "EnaSupport": True,
        "ImdsSupport": "v2.0",
        "RootDeviceName": ROOT_DEVICE,
        "BlockDeviceMappings": [
            {
                "DeviceName": ROOT_DEVICE,
                "Ebs": {
                    "SnapshotId": snapshot_id,
                    "VolumeType": "gp3",
                    "VolumeSize": volume_gib(image.size),
                    "DeleteOnTermination": True,
                },
            }
        ],
        "TagSpecifications": [{"ResourceType": "image", "Tags": tag_list}],
    }


@dataclass
class _Ledger:
    """What this run created, newest last, with how to delete each."""

    items: list[tuple[str, Callable[[], Any], str]] = field(default_factory=list)

    def add(self, resource: str, delete: Callable[[], Any], command: str) -> None:
        self.items.append((resource, delete, command))

    def unwind(self, caller: Caller) -> tuple[list[str], list[tuple[str, str]]]:
        deleted, left = [], []
        for resource, delete, command in reversed(self.items):
            try:
                caller.call(f"delete {resource}", delete, idempotent=True)
                deleted.append(resource)
            except Exception:  # listed for the operator instead
                left.append((resource, command))
        return deleted, left


def publish(
    clients: Clients,
    image: RoleImage,
    *,
    name: str | None = None,
    wait: bool = True,
    workers: int = 16,
    progress: Progress | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Published:
    """The AMI for `image`: an existing one tagged with its sha256, or a new upload + registration."""
    say = on_step or (lambda _msg: None)
    mode = boot_mode(image.path)  # before any AWS call: a disk EC2 cannot boot is not uploaded
    existing = find_existing(clients, image.sha256)
    if existing is not None:
        return Published(
            existing["ImageId"],
            existing.get("Name", ""),
            existing.get("State", ""),
            reused=True,
            boot_mode=existing.get("BootMode"),
        )
    for old in find_leftovers(clients, image.sha256):
        say(
            f"note: {old} holds this image from an earlier run that did not finish; not used, not deleted "
            f"(delete it: aws ec2 delete-snapshot --snapshot-id {old})"
        )
    name = name or default_name(image)
    tags = image_tags(image, name)
    ebs, ec2, caller = clients.ebs, clients.ec2, clients.caller
    ledger = _Ledger()
    try:
        snapshot_id = start_snapshot(ebs, caller, image, tags=tags, description=f"kiln {image.role} {image.sha256}")
        ledger.add(
            snapshot_id,
            lambda: ec2.delete_snapshot(SnapshotId=snapshot_id),
            f"aws ec2 delete-snapshot --snapshot-id {snapshot_id}",
        )
        say(f"snapshot {snapshot_id} started")
        written = write_blocks(ebs, caller, snapshot_id, image, workers=workers, progress=progress)
        complete_snapshot(ebs, caller, snapshot_id, written)
        wait_completed(ec2, caller, snapshot_id)
        say(f"snapshot {snapshot_id} completed")
        request = register_request(name, image, snapshot_id, mode, tags)
        response = caller.call("ec2.RegisterImage", lambda: ec2.register_image(**request))
        image_id = str(response["ImageId"])
        ledger.add(
            image_id, lambda: ec2.deregister_image(ImageId=image_id), f"aws ec2 deregister-image --image-id {image_id}"
        )
        # CreateTags repeats the tags RegisterImage's TagSpecifications set: a no-op on EC2, and it makes
        # endpoints that ignore TagSpecifications (moto) find the image by its sha256 tag as well.
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        caller.call(
            f"ec2.CreateTags ({image_id})",
            lambda: ec2.create_tags(Resources=[image_id], Tags=tag_list),
            idempotent=True,
        )
        if wait:
            waiter = ec2.get_waiter("image_available")
            caller.call(
                f"ec2.DescribeImages (waiting for {image_id} to become available)",
                lambda: waiter.wait(ImageIds=[image_id], WaiterConfig={"Delay": 10, "MaxAttempts": 90}),
                idempotent=True,
            )
            state = "available"
        else:
            described = caller.call(
                f"ec2.DescribeImages ({image_id})", lambda: ec2.describe_images(ImageIds=[image_id]), idempotent=True
            )
            images: list[dict[str, Any]] = described.get("Images", [])
            state = str(images[0].get("State", "pending")) if images else "pending"
    except BaseException as e:  # Ctrl-C too: what this run created goes again
        deleted, left = ledger.unwind(caller)
        cause = e if isinstance(e, Exception) else RuntimeError(f"interrupted ({type(e).__name__})")
        raise PublishError(cause, deleted, left) from e
    return Published(image_id, name, state, reused=False, snapshot_id=snapshot_id, boot_mode=mode, stats=written.stats)
