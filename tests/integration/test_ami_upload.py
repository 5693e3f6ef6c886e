"""./inv upload-ami against a real moto server on loopback, behind a thin HTTP proxy of ours that records
every request and can answer with real AWS error responses (throttling, 500s) before moto sees them.

What moto checks and what it does not (moto 5.x, moto/ebs and moto/ec2):
- StartSnapshot, PutSnapshotBlock, CompleteSnapshot, ListSnapshotBlocks and GetSnapshotBlock are implemented,
  and the blocks read back byte for byte. moto does NOT validate a block's checksum nor CompleteSnapshot's
  ChangedBlocksCount and aggregate checksum, reports BlockSize 512 (EBS: 524288), ignores StartSnapshot's
  ClientToken and Timeout, and marks the EC2 snapshot completed from the start. So the checksums are checked
  here on the wire, against values computed independently in the test.
- RegisterImage keeps only Name and Description: moto drops Architecture, BootMode, EnaSupport, RootDeviceName,
  BlockDeviceMappings, ImdsSupport and TagSpecifications (DescribeImages answers with its own defaults). So the
  registration is checked on the wire (the recorded request), and the tags through CreateTags + DescribeImages.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

import kiln
from kiln.aws.ami import PublishError, publish
from kiln.aws.blocks import BLOCK_SIZE
from kiln.aws.bootmode import NotBootable
from kiln.aws.calls import RetryPolicy
from kiln.aws.cli import make_clients
from kiln.aws.image import locate
from tests.moto_server import DUMMY_ENV, moto_server
from tests.testdisk import write_test_disk

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
FAST = RetryPolicy(base=0.05, cap=0.2, deadline=60, connect_timeout=5, read_timeout=30)


# --- the proxy ---------------------------------------------------------------------------------------------------


@dataclass
class Exchange:
    op: str
    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, str]  # EC2 query parameters
    status: int
    injected: bool


@dataclass
class Fault:
    op: str
    code: str
    status: int
    times: int  # how many matching requests get the fault
    block: int | None = None  # PutSnapshotBlock: only this block index


_EBS_OPS = [
    ("POST", re.compile(r"^/snapshots$"), "StartSnapshot"),
    ("PUT", re.compile(r"^/snapshots/[^/]+/blocks/(\d+)$"), "PutSnapshotBlock"),
    ("POST", re.compile(r"^/snapshots/completion/[^/]+$"), "CompleteSnapshot"),
    ("GET", re.compile(r"^/snapshots/[^/]+/blocks$"), "ListSnapshotBlocks"),
    ("GET", re.compile(r"^/snapshots/[^/]+/blocks/\d+$"), "GetSnapshotBlock"),
]


@dataclass
class FaultProxy:
    upstream: str
    url: str = ""  # where the clients send their calls
    log: list[Exchange] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    delays: dict[str, float] = field(default_factory=dict)  # op -> seconds before it is forwarded
    in_flight: int = 0
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ops(self, name: str) -> list[Exchange]:
        return [e for e in self.log if e.op == name]

    def _fault_for(self, op: str, block: int | None) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.op == op and fault.times > 0 and (fault.block is None or fault.block == block):
                    fault.times -= 1
                    return fault
        return None

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        path = urlsplit(h.path).path
        op, block, params = "?", None, {}
        for method, pattern, name in _EBS_OPS:
            if h.command == method and (m := pattern.match(path)):
                op, block = name, int(m.group(1)) if m.groups() else None
                break
        else:
            if h.command == "POST" and path == "/":
                params = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                op = params.get("Action", "?")
        with self.lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            fault = self._fault_for(op, block)
            time.sleep(self.delays.get(op, 0.0))
            if fault:
                status, headers, payload = _error_response(fault, ebs=op in {n for _, _, n in _EBS_OPS})
            else:
                status, headers, payload = self._forward(h, body)
        finally:
            with self.lock:
                self.in_flight -= 1
        with self.lock:
            self.log.append(Exchange(op, h.command, h.path, dict(h.headers), params, status, fault is not None))
        h.send_response(status)
        for k, v in headers:
            if k.lower() not in {"content-length", "transfer-encoding", "connection", "server", "date"}:
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(payload)

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        up = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in {"connection", "keep-alive"}}
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()


def _error_response(fault: Fault, *, ebs: bool) -> tuple[int, list[tuple[str, str]], bytes]:
    """The error as the real service sends it: rest-json for EBS, the EC2 XML error document for EC2."""
    message = f"injected by the kiln-ami test proxy: {fault.code}"
    if ebs:
        body = json.dumps({"__type": fault.code, "message": message}).encode()
        return fault.status, [("Content-Type", "application/json"), ("x-amzn-ErrorType", fault.code)], body
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{fault.code}</Code>'
        f"<Message>{message}</Message></Error></Errors><RequestID>kiln-ami-fault</RequestID></Response>"
    ).encode()
    return fault.status, [("Content-Type", "text/xml;charset=UTF-8")], body


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in DUMMY_ENV.items():
            mp.setenv(k, v)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        with moto_server() as url:
            yield url


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    fp = FaultProxy(moto_url)

    class Handler(BaseHTTPRequestHandler):
        def do_any(self) -> None:
            fp.handle(self)

        do_GET = do_PUT = do_POST = do_DELETE = do_any

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="kiln-ami-proxy", daemon=True)
    thread.start()
    fp.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fp
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def direct(moto_url: str) -> tuple[object, object]:
    """ebs and ec2 clients straight to moto, to look at what the upload left there."""
    return (
        boto3.client("ebs", endpoint_url=moto_url, region_name=REGION),
        boto3.client("ec2", endpoint_url=moto_url, region_name=REGION),
    )


# --- disks -------------------------------------------------------------------------------------------------------


def make_disk(
    images: Path, role: str, *, blocks: int, data_at: set[int], tail: int = 0, boot_code: bool = True
) -> Path:
    """images/<role>/<role>.raw: MBR, boot code, random data in the `data_at` blocks, zeros elsewhere."""
    path = images / role / f"{role}.raw"
    return write_test_disk(path, blocks=blocks, data_at=data_at, tail=tail, boot_code=boot_code)


def file_blocks(path: Path) -> dict[int, bytes]:
    """Every non-zero 512 KiB block of the file, the last one zero-padded: what the snapshot must hold."""
    out = {}
    with path.open("rb") as f:
        index = 0
        while block := f.read(BLOCK_SIZE):
            if block.count(0) != len(block):
                out[index] = block + bytes(BLOCK_SIZE - len(block))
            index += 1
    return out


def snapshot_blocks(ebs: object, snapshot_id: str) -> dict[int, bytes]:
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]
    out = {}
    for b in listed:
        got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
        out[b["BlockIndex"]] = got["BlockData"].read()
    return out


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


# --- tests -------------------------------------------------------------------------------------------------------


def test_upload_puts_the_files_blocks_and_registers_the_ami(tmp_path, proxy, direct):
    data_at = {0, 3, 4, 17, 30, 47}
    path = make_disk(tmp_path, "web", blocks=47, tail=100 * 1024, data_at=data_at)  # 48 blocks, the last partial
    image = locate(tmp_path, "web")
    clients = make_clients(REGION, proxy.url, workers=8, policy=FAST)
    proxy.delays["PutSnapshotBlock"] = 0.1  # each put takes a while: the ones sent together overlap
    seen: list[tuple[int, bool]] = []

    result = publish(clients, image, progress=lambda i, sent: seen.append((i, sent)))

    expected = file_blocks(path)
    assert set(expected) == data_at
    assert not result.reused and result.boot_mode == "legacy-bios"
    assert result.stats.sent == 6 and result.stats.skipped == 42 and result.stats.blocks == 48
    assert sorted(seen) == [(i, i in data_at) for i in range(48)]
    ebs, ec2 = direct
    assert snapshot_blocks(ebs, result.snapshot_id) == expected  # read back from moto, byte for byte

    puts = proxy.ops("PutSnapshotBlock")
    assert len(puts) == 6 and proxy.peak_in_flight > 1, "several blocks in flight"
    for put in puts:
        index = int(put.path.rsplit("/", 1)[1])
        assert put.headers["x-amz-Checksum"] == base64.b64encode(hashlib.sha256(expected[index]).digest()).decode()
        assert put.headers["x-amz-Checksum-Algorithm"] == "SHA256"
        assert put.headers["x-amz-Data-Length"] == str(BLOCK_SIZE)
    (complete,) = proxy.ops("CompleteSnapshot")
    linear = hashlib.sha256(b"".join(hashlib.sha256(expected[i]).digest() for i in sorted(expected))).digest()
    assert complete.headers["x-amz-Checksum"] == base64.b64encode(linear).decode()
    assert complete.headers["x-amz-Checksum-Aggregation-Method"] == "LINEAR"
    assert complete.headers["x-amz-ChangedBlocksCount"] == "6"

    (register,) = proxy.ops("RegisterImage")
    p = register.params
    assert (p["Architecture"], p["BootMode"], p["EnaSupport"], p["VirtualizationType"]) == (
        "x86_64",
        "legacy-bios",
        "true",
        "hvm",
    )
    assert p["ImdsSupport"] == "v2.0" and p["RootDeviceName"] == "/dev/xvda"
    assert p["BlockDeviceMapping.1.DeviceName"] == "/dev/xvda"
    assert p["BlockDeviceMapping.1.Ebs.SnapshotId"] == result.snapshot_id
    assert p["BlockDeviceMapping.1.Ebs.VolumeType"] == "gp3"
    assert p["BlockDeviceMapping.1.Ebs.VolumeSize"] == "1"
    assert p["BlockDeviceMapping.1.Ebs.DeleteOnTermination"] == "true"
    assert p["TagSpecification.1.ResourceType"] == "image"

    want = {"kiln:role": "web", "kiln:image-sha256": image.sha256, "kiln:version": kiln.__version__}
    (ami,) = ec2.describe_images(ImageIds=[result.image_id])["Images"]
    (snap,) = ec2.describe_snapshots(SnapshotIds=[result.snapshot_id])["Snapshots"]
    assert want.items() <= tags_of(ami).items() and want.items() <= tags_of(snap).items()
    assert ami["Name"] == f"kiln-ami-web-{image.sha256[:16]}" and snap["State"] == "completed"


def test_inv_upload_ami_twice_uploads_once(tmp_path, proxy, direct):
    make_disk(tmp_path, "db", blocks=8, data_at={0, 5})
    env = {**os.environ, **DUMMY_ENV}
    argv = [
        sys.executable,
        "-m",
        "invoke",
        "--search-root",
        str(PROJECT),
        "upload-ami",
        "--role",
        "db",
        "--images",
        str(tmp_path),
        "--region",
        REGION,
        "--endpoint-url",
        proxy.url,
    ]

    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    ami_id = re.search(r"^(ami-[0-9a-f]+) kiln-ami-db-", first.stdout, re.M).group(1)
    assert "2 blocks sent" in first.stdout and "6 zero blocks skipped" in first.stdout
    assert "legacy-bios" in first.stdout and "8/8" in first.stderr  # the progress bar's last state
    puts_before = len(proxy.ops("PutSnapshotBlock"))

    second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{ami_id} (kiln-ami-db-" in second.stdout and "nothing uploaded" in second.stdout
    assert len(proxy.ops("StartSnapshot")) == 1 and len(proxy.ops("PutSnapshotBlock")) == puts_before
    assert len(proxy.ops("RegisterImage")) == 1


def test_throttling_is_retried_with_backoff(tmp_path, proxy, direct):
    path = make_disk(tmp_path, "app", blocks=16, data_at={0, 2, 7, 9, 15})
    proxy.faults += [
        Fault("StartSnapshot", "ThrottlingException", 400, times=1),
        Fault("PutSnapshotBlock", "RequestThrottledException", 400, times=5),
        Fault("PutSnapshotBlock", "RequestThrottledException", 400, times=4, block=9),  # beyond the SDK's 3 tries
        Fault("RegisterImage", "RequestLimitExceeded", 503, times=4),  # beyond the SDK's 3 tries
    ]
    clients = make_clients(REGION, proxy.url, workers=4, policy=FAST)

    result = publish(clients, locate(tmp_path, "app"))

    assert all(f.times == 0 for f in proxy.faults), "every injected throttle was met"
    assert len(proxy.ops("RegisterImage")) == 5 and len(proxy.ops("StartSnapshot")) == 2
    assert len(proxy.ops("PutSnapshotBlock")) == 5 + 5 + 4
    assert clients.caller.retries >= 10
    assert snapshot_blocks(direct[0], result.snapshot_id) == file_blocks(path)
    (ami,) = direct[1].describe_images(ImageIds=[result.image_id])["Images"]
    assert ami["State"] == "available"


def _snapshots_tagged(ec2: object, sha256: str) -> list[dict]:
    return ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "tag:kiln:image-sha256", "Values": [sha256]}])[
        "Snapshots"
    ]


def test_a_failing_register_names_the_call_and_deletes_the_snapshot(tmp_path, proxy, direct):
    make_disk(tmp_path, "lb", blocks=8, data_at={0, 1})
    image = locate(tmp_path, "lb")
    proxy.faults.append(Fault("RegisterImage", "InternalError", 500, times=100))
    clients = make_clients(REGION, proxy.url, workers=4, policy=FAST)

    with pytest.raises(PublishError) as caught:
        publish(clients, image)

    message = str(caught.value)
    assert message.startswith("ec2.RegisterImage failed after 3 attempts: InternalError")
    (started,) = proxy.ops("StartSnapshot")
    assert len(proxy.ops("RegisterImage")) == 3, "the SDK's 3 tries; not repeated by us: it may have acted"
    (snapshot_id,) = caught.value.deleted
    assert f"deleted what this run created: {snapshot_id}" in message
    assert _snapshots_tagged(direct[1], image.sha256) == []
    assert [e.params["SnapshotId"] for e in proxy.ops("DeleteSnapshot")] == [snapshot_id]


def test_a_rejected_block_names_it_and_nothing_is_registered(tmp_path, proxy, direct):
    make_disk(tmp_path, "web", blocks=24, data_at={0, 4, 11, 12, 20})
    image = locate(tmp_path, "web")
    proxy.faults.append(Fault("PutSnapshotBlock", "ValidationException", 400, times=100, block=11))
    clients = make_clients(REGION, proxy.url, workers=4, policy=FAST)

    with pytest.raises(PublishError) as caught:
        publish(clients, image)

    assert re.match(r"ebs\.PutSnapshotBlock \(snap-\w+, block 11\) failed: ValidationException", str(caught.value))
    assert len([e for e in proxy.ops("PutSnapshotBlock") if e.path.endswith("/blocks/11")]) == 1, "not retried"
    assert proxy.ops("CompleteSnapshot") == [] and proxy.ops("RegisterImage") == []
    assert _snapshots_tagged(direct[1], image.sha256) == []


def test_what_cannot_be_deleted_is_listed(tmp_path, proxy, direct):
    make_disk(tmp_path, "db", blocks=8, data_at={0, 3})
    image = locate(tmp_path, "db")
    proxy.faults += [
        Fault("RegisterImage", "InvalidParameterValue", 400, times=1),
        Fault("DeleteSnapshot", "UnauthorizedOperation", 403, times=100),
    ]
    clients = make_clients(REGION, proxy.url, workers=4, policy=FAST)

    with pytest.raises(PublishError) as caught:
        publish(clients, image)

    (left,) = _snapshots_tagged(direct[1], image.sha256)
    assert caught.value.deleted == []
    assert (
        f"left behind: {left['SnapshotId']} (delete it: aws ec2 delete-snapshot --snapshot-id {left['SnapshotId']})"
        in str(caught.value)
    )

    steps: list[str] = []
    result = publish(clients, image, on_step=steps.append)  # the next run says so, and uploads anew
    assert f"note: {left['SnapshotId']} holds this image from an earlier run that did not finish" in steps[0]
    assert result.snapshot_id != left["SnapshotId"] and not result.reused
    direct[1].delete_snapshot(SnapshotId=left["SnapshotId"])


def test_a_file_that_is_not_the_manifests_image_is_not_registered(tmp_path, proxy, direct):
    path = make_disk(tmp_path, "lb", blocks=8, data_at={0, 6})
    wrong = hashlib.sha256(b"another build").hexdigest()
    manifest = {"role": "lb", "files": {"lb.raw": {"sha256": wrong, "size": path.stat().st_size}}}
    (tmp_path / "lb" / "manifest.json").write_text(json.dumps(manifest))
    clients = make_clients(REGION, proxy.url, workers=2, policy=FAST)

    with pytest.raises(PublishError, match=f"but {wrong} expected") as caught:
        publish(clients, locate(tmp_path, "lb"))
    assert proxy.ops("CompleteSnapshot") == [] and proxy.ops("RegisterImage") == []
    assert len(caught.value.deleted) == 1 and _snapshots_tagged(direct[1], wrong) == []


def test_ctrl_c_during_the_upload_deletes_the_snapshot(tmp_path, proxy, direct):
    make_disk(tmp_path, "web", blocks=128, data_at=set(range(0, 128, 2)))  # 64 blocks to send, 16 at a time
    image = locate(tmp_path, "web")
    # four rounds of 2 s: the interrupt lands mid-upload even when a busy machine is slow to notice the first put
    proxy.delays["PutSnapshotBlock"] = 2.0
    argv = [
        sys.executable,
        "-m",
        "invoke",
        "--search-root",
        str(PROJECT),
        "upload-ami",
        "--role",
        "web",
        "--images",
        str(tmp_path),
        "--region",
        REGION,
        "--endpoint-url",
        proxy.url,
    ]
    # SIGINT as a terminal sends it: a pytest-xdist worker ignores SIGINT and its children inherit that, and Python
    # started with SIGINT ignored never raises KeyboardInterrupt (the test then saw the upload run to its end)
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **DUMMY_ENV},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 30
        while not proxy.ops("PutSnapshotBlock") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.ops("PutSnapshotBlock"), "the upload never started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()

    assert proc.returncode == 1, out + err
    assert "interrupted (KeyboardInterrupt)" in err and "deleted what this run created: snap-" in err
    assert len(proxy.ops("PutSnapshotBlock")) < 64 and proxy.ops("RegisterImage") == []
    assert proxy.in_flight == 0, "no put still running once the command has exited"
    assert _snapshots_tagged(direct[1], image.sha256) == []


def test_no_wait_registers_and_reports_the_state_as_it_is(tmp_path, proxy):
    make_disk(tmp_path, "app", blocks=4, data_at={0, 3})
    clients = make_clients(REGION, proxy.url, workers=2, policy=FAST)

    result = publish(clients, locate(tmp_path, "app"), wait=False)

    assert result.state == "available"  # what DescribeImages says (moto makes images available at once)
    assert [e.op for e in proxy.log if e.op in {"RegisterImage", "CreateTags", "DescribeImages"}][-3:] == [
        "RegisterImage",
        "CreateTags",
        "DescribeImages",
    ]


def test_a_disk_ec2_cannot_boot_is_refused_before_any_aws_call(tmp_path, proxy):
    make_disk(tmp_path, "app", blocks=4, data_at={0, 2}, boot_code=False)
    clients = make_clients(REGION, proxy.url, workers=2, policy=FAST)

    with pytest.raises(NotBootable, match="no boot code in the MBR and no EFI system partition"):
        publish(clients, locate(tmp_path, "app"))
    assert proxy.log == []


@pytest.mark.slow
def test_a_built_role_image_uploads_block_for_block(moto_url, direct, images: Path):
    raw = sorted(p for p in images.glob("*/*.raw") if p.stem == p.parent.name and p.stem != "installer")[0]
    image = locate(raw.parent.parent, raw.stem)
    clients = make_clients(REGION, moto_url, workers=16)

    result = publish(clients, image)

    assert result.boot_mode in {"legacy-bios", "uefi-preference"}
    got = snapshot_blocks(direct[0], result.snapshot_id)
    assert got == file_blocks(raw)
    assert result.stats.sent + result.stats.skipped == result.stats.blocks
