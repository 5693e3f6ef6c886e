"""kiln's Invoke tasks: each parses its arguments and calls into kiln/. Run them with ./inv TASK."""

from __future__ import annotations

import os
import shlex
import sys

from invoke import Collection, Exit, task

from kiln import benchrun, cli
from kiln.project import Project


def _exit(code: int) -> None:
    if code:
        raise Exit(code=code)


@task(help={"roles": "roles.yaml to check (default: the shipped one)", "json": "print the problems as JSON"})
def validate(c, roles=None, json=False):
    """Check roles.yaml: every problem at once, one line each, with file, line and path."""
    _exit(cli.validate(Project(roles=roles), as_json=json))


@task(help={"roles": "roles.yaml to render (default: the shipped one)", "out": "output directory (required)"})
def render(c, out, roles=None):
    """Write every host's bundle.json and config files under OUT for review before any machine boots."""
    _exit(cli.render(Project(roles=roles), out=out))


@task(help={"roles": "roles.yaml the certificate is issued for", "secrets": "secrets directory (default: secrets/)"})
def keys(c, roles=None, secrets=None):
    """Create what is missing under secrets/ (signing key, CA, site certificate, passwords); never overwrite."""
    _exit(cli.keys(Project(roles=roles), secrets=secrets))


@task(
    help={
        "quick": "skip image builds and the lab (under 3 minutes)",
        "lab": "include the reference lab: boot, verify, chaos, day 2, db failover (--no-lab: everything else)",
        "k": "only tests matching this pytest -k expression",
    }
)
def test(c, quick=False, lab=True, k=None):
    """Run the whole test suite: unit, integration with real daemons, and (without --quick) the slow tiers."""
    base = [sys.executable, "-m", "pytest", *(["-k", k] if k else [])]
    # the quick tier on two workers per core (its tests wait on daemons about half the time: 2:30 instead of
    # 6:30 on two cores), each test file on one worker (its module fixtures: servers, namespaces, MariaDB); the
    # slow tier (image builds, QEMU boots, the lab) after it, alone, since the emulated CPUs need every core
    runs = [base + ["-m", "not slow", "-n", str(2 * (os.cpu_count() or 1)), "--dist", "loadfile"]]
    if not quick:
        # each slow test's time in the report: CI's 90 minutes are spent here; a failure's report at once, not
        # at the end: a run CI stops at its time limit still says what failed (--instafail, pytest-instafail)
        runs.append(base + ["-m", "slow" if lab else "slow and not lab", "--durations=25", "--instafail"])
    codes = [c.run(shlex.join(argv), pty=sys.stdout.isatty(), warn=True).exited for argv in runs]
    no_tests = 5  # pytest's code when -k selected nothing in that tier
    failed = [code for code in codes if code not in (0, no_tests)]
    if failed or all(code == no_tests for code in codes):
        raise Exit(code=failed[0] if failed else no_tests, message="tests failed")


DAY2 = {
    "roles": "roles.yaml (default: the shipped one)",
    "server": "the provisioning server's URL (default: roles.yaml's provisioning URL)",
    "lab": "talk to the lab's server (./inv lab up), from inside its network namespace",
    "secrets": "secrets directory with the cluster CA and operator token (default: secrets/)",
}


@task(
    help={
        **DAY2,
        "diff": "show each changed file's diff (--no-diff: only what changes)",
        "check": "run every changed config through its checker (--no-check: skip)",
    }
)
def plan(c, roles=None, server=None, lab=False, secrets=None, diff=True, check=True):
    """What publishing roles.yaml would do to the running cluster, host by host; "no changes" when nothing."""
    _exit(cli.plan(Project(roles=roles), server=server, lab=lab, secrets=secrets, diff=diff, check=check))


@task(
    help={
        **DAY2,
        "wait": "wait until the running hosts run it (--no-wait: return once published)",
        "timeout": "seconds to wait per generation",
        "check": "run every changed config through its checker first (--no-check: skip it; unsafe)",
    }
)
def apply(c, roles=None, server=None, lab=False, secrets=None, wait=True, timeout=300.0, check=True):
    """Publish roles.yaml to the running server as the next generation; removed hosts are drained first."""
    options = {"server": server, "lab": lab, "secrets": secrets, "wait": wait, "check": check}
    _exit(cli.apply_roles(Project(roles=roles), timeout=float(timeout), **options))


@task(
    help={
        **DAY2,
        "json": "print the server's answer as JSON",
        "wait": "wait until every running host converged",
        "timeout": "seconds --wait waits",
    }
)
def hosts(c, roles=None, server=None, lab=False, secrets=None, json=False, wait=False, timeout=300.0):
    """Every host: its state, the generation it runs, whether the cluster converged; retiring and retired hosts."""
    options = {"server": server, "lab": lab, "secrets": secrets, "as_json": json, "wait": wait}
    _exit(cli.hosts(Project(roles=roles), timeout=float(timeout), **options))


@task(help={"quick": "smaller inputs, for a fast look"})
def bench(c, quick=False):
    """Run the benchmarks under bench/: a table on stdout, results in bench/results/, latest in docs/benchmarks.md."""
    _exit(benchrun.run_all(quick=quick))


@task(
    help={
        "role": "the role whose images/<role>/<role>.raw is published (required)",
        "region": "AWS region (default: AWS_REGION / your AWS config)",
        "endpoint-url": "send the EC2 and EBS calls here instead of AWS (e.g. a moto server)",
        "name": "AMI name (default: kiln-ami-<role>-<first 16 hex of the image sha256>)",
        "wait": "wait until the AMI is available (--no-wait: return once it is registered)",
        "images": "images directory (default: images/)",
        "roles": "the cluster the image must be baked for (default: $KILN_ROLES, then the shipped roles.yaml)",
    }
)
def upload_ami(c, role, region=None, endpoint_url=None, name=None, wait=True, images=None, roles=None):
    """Publish a role image as an AMI through the EBS direct APIs; reuse the AMI already holding the same image."""
    from kiln.aws.cli import upload_ami as run_upload  # boto3 loads only for this task

    project = Project(roles=roles)
    _exit(
        run_upload(role, region=region, endpoint_url=endpoint_url, name=name, wait=wait, images=images, project=project)
    )


@task(
    help={
        "role": "the role to build: lb, web, app or db (required)",
        "force": "rebuild even when up to date",
        "roles": "the cluster file whose provisioning URL and keys the image bakes (default: $KILN_ROLES, roles.yaml)",
    }
)
def build(c, role, force=False, roles=None):
    """Build one role image with diskimage-builder into images/<role>/ (raw, qcow2, manifest.json, build.log)."""
    from kiln.build import cli as build_cli

    _exit(build_cli.build(Project(roles=roles), role=role, force=force))


@task(
    name="build-all",
    help={
        "force": "rebuild every image even when up to date",
        "jobs": "images built side by side (default: one per core, at most 4)",
        "roles": "the cluster file whose roles are built (default: $KILN_ROLES, then the shipped roles.yaml)",
    },
)
def build_all(c, force=False, jobs=0, roles=None):
    """Build every role image roles.yaml uses, side by side, and the PXE installer, skipping what is up to date."""
    from kiln.build import cli as build_cli

    _exit(build_cli.build_all(Project(roles=roles), force=force, jobs=int(jobs) or None))


@task(
    help={
        "roles": "the cluster file (default: $KILN_ROLES, then the shipped roles.yaml)",
        "images": "images directory (default: images/)",
        "secrets": "secrets directory (default: secrets/)",
    }
)
def doctor(c, roles=None, images=None, secrets=None):
    """Check the whole setup before machines boot: secrets, certificates, images, installer, ports, packages."""
    from pathlib import Path

    from kiln.doctor import doctor as run_doctor

    project = Project(roles=roles)
    _exit(run_doctor(project, images=Path(images) if images else None, secrets=Path(secrets) if secrets else None))


@task(
    help={
        "roles": "roles.yaml to serve (default: the shipped one)",
        "listen": "HTTP listener for iPXE scripts and images, ADDR:PORT (default 0.0.0.0:8080)",
        "tls_listen": "HTTPS listener for bundles, events and the dashboard (default 0.0.0.0:<provisioning URL port>)",
        "database": "state database URL: sqlite:///PATH (default sqlite:///state/kiln.db) or postgresql://USER:PASS@HOST/DB",
        "secrets": "secrets directory (default: secrets/)",
        "images": "images directory (default: images/)",
        "tftp_listen": "TFTP listener for UEFI Secure Boot network boot (shim, GRUB, configs), ADDR:69 (default: off)",
    }
)
def serve(c, roles=None, listen=None, tls_listen=None, database=None, secrets=None, images=None, tftp_listen=None):
    """Serve booting hosts their iPXE scripts, images and signed bundles; record their events; show the dashboard."""
    from kiln.server.cli import serve_command

    _exit(
        serve_command(
            Project(roles=roles),
            listen=listen,
            tls_listen=tls_listen,
            database=database,
            secrets=secrets,
            images=images,
            tftp_listen=tftp_listen,
        )
    )


@task(
    help={
        "out": "directory to write shimx64.efi, grubx64.efi and grub/grub.cfg into (required)",
        "server": "the address of ./inv serve --tftp-listen, when another TFTP server hands out these files",
    }
)
def tftp_root(c, out, server=None):
    """Lay out the Secure Boot network boot's TFTP files (Debian's signed shim and GRUB) for your TFTP server."""
    from pathlib import Path

    from kiln.server.cli import tftp_root_command

    _exit(tftp_root_command(Path(out), server))


@task(
    help={
        "host": "the host to re-arm, by its name in roles.yaml (required)",
        "roles": "roles.yaml the host is in (default: the shipped one)",
        "database": "state database URL (as for serve)",
        "force": "a db host: re-arm it even if it may be the primary or hold the only current copy",
    }
)
def reprovision(c, host, roles=None, database=None, force=False):
    """Re-arm HOST: its next PXE boot installs it again and its secrets are handed out once more."""
    from kiln.server.cli import reprovision_command

    _exit(reprovision_command(Project(roles=roles), host=host, database=database, force=force))


@task(
    positional=["host", "action"],
    help={
        "host": "the host, by its name in roles.yaml (required)",
        "action": "on, off, cycle or status (status prints on or off)",
        "pxe": "on, cycle: the next boot (only that one) from the network",
        "roles": "roles.yaml with the host's bmc (default: $KILN_ROLES, then the shipped one)",
        "secrets": "secrets directory with the BMC's login (default: secrets/)",
        "timeout": "seconds the BMC gets to report the new state (default 60)",
    },
)
def power(c, host, action, pxe=False, roles=None, secrets=None, timeout=60.0):
    """Power HOST on, off, cycle it or print its status through its BMC (ipmi, redfish or the lab's QEMU)."""
    from kiln.power.cli import power as run_power

    _exit(run_power(Project(roles=roles), host, action, pxe=pxe, secrets=secrets, timeout=float(timeout)))


@task(
    help={
        "role": "the tier to roll: lb, web, app or db (required)",
        "hosts": "only these hosts of the role, comma-separated (default: all of them)",
        "batch": "hosts rolled side by side (default 1; lb and db always 1)",
        "reboot_only": "no reinstall: drain and reboot the hosts that ask for it (/run/reboot-required), one at a time",
        "allow_outage": "roll even the last healthy host of the tier",
        "probe": "a URL (the VIP) requested in a loop while rolling; the summary counts the failed requests",
        "lab": "reach the lab's hosts from inside its network namespace, with its SSH key",
        "database": "the server's state database URL (as for serve; with --lab, the lab's)",
        "drain_timeout": "seconds each LB waits for a web server's open sessions to finish (default 30)",
        "roles": "roles.yaml of the cluster (default: the shipped one)",
    }
)
def roll(
    c,
    role,
    hosts="",
    batch=1,
    reboot_only=False,
    allow_outage=False,
    probe=None,
    lab=False,
    database=None,
    drain_timeout=30.0,
    roles=None,
):
    """Update ROLE's hosts one batch at a time: drain, re-arm, PXE, join, back in rotation; run again to resume."""
    from kiln.roll.cli import roll as run_roll

    only = [h for h in hosts.split(",") if h]
    options = {"reboot_only": reboot_only, "allow_outage": allow_outage, "probe": probe, "lab": lab}
    options.update(database=database, drain_timeout=float(drain_timeout))
    _exit(run_roll(Project(roles=roles), role, hosts=only, batch=int(batch), **options))


@task(help={"force": "freeze again even when the agent's sources did not change"})
def freeze(c, force=False):
    """Freeze the first-boot agent with PyInstaller (onedir) into images/firstboot/, when its sources changed."""
    from kiln.freeze import freeze as freeze_agent

    _exit(freeze_agent(force=force))


@task(
    positional=["action"],
    help={
        "action": "up, status, verify, audit, chaos, roll, failover, down or ssh",
        "host": "ssh: the host to open a shell on; audit: only these hosts, comma-separated (default: every host)",
        "boot": "up: pxe (empty disks, network install; the default) or disk (overlays of the built images)",
        "firmware": "up: bios (SeaBIOS, the default), uefi (OVMF) or secureboot (OVMF, Secure Boot enforcing)",
        "timeout": "up: seconds to wait for every host to join (default 1800)",
        "roles": "roles.yaml of the lab (default: the shipped one)",
        "checks": "verify: only the checks whose names match this pytest -k expression (e.g. 'firewall or web3')",
    },
)
def lab(c, action, host="", boot="pxe", timeout=1800.0, roles=None, checks="", firmware="bios"):
    """The reference cluster in QEMU here; ACTION: up, status, verify, audit, chaos, roll, failover, down, ssh."""
    from kiln.lab import cli as lab_cli

    if action not in lab_cli.ACTIONS:
        raise Exit(f"lab: unknown action {action!r} (expected one of: {', '.join(lab_cli.ACTIONS)})", code=2)
    # ssh: what follows `--` runs on the host as the admin account (./inv lab ssh --host db1 -- sudo mariadb)
    command = c.remainder if action == "ssh" else ""
    project = Project(roles=roles)
    _exit(
        lab_cli.run(
            project,
            action=action,
            host=host,
            boot=boot,
            timeout=float(timeout),
            command=command,
            checks=checks,
            firmware=firmware,
        )
    )


@task(
    positional=["action"],
    help={
        "action": "backup, archive, backups, restore-test, schedule, status, switchover or monitor",
        "backup": "restore-test: the backup to restore (default: the newest before the target)",
        "to_gtid": "restore-test: restore up to this checkpoint's GTID (default: the newest checkpoint)",
        "to_time": "restore-test: up to the newest checkpoint at or before this time (ISO 8601, UTC)",
        "roles": "roles.yaml with roles.db.backup (default: the shipped one)",
        "secrets": "secrets directory with backup.key and the bucket's credentials (default: secrets/)",
        "workdir": "where backup and restore-test keep their temporary files (default: the system's temp dir)",
        "json": "backups, restore-test, status: print JSON",
        "to": "switchover: the replica that becomes the primary",
        "keep": "restore-test: keep the scratch server's files",
        "out": "schedule: the directory the runner's systemd units are written to",
        "lab": "backup, archive, status, switchover, monitor: reach the lab's db hosts from inside its namespace",
        "ssh_user": "backup, archive: log in to the replica as this account (default: roles.yaml access.admin_user)",
    },
)
def db(
    c,
    action,
    backup=None,
    to_gtid=None,
    to_time=None,
    roles=None,
    secrets=None,
    workdir=None,
    json=False,
    keep=False,
    out=None,
    lab=False,
    to=None,
    ssh_user=None,
):
    """The data tier: ACTION status, switchover --to HOST, monitor, backup, archive, backups, restore-test, schedule."""
    from kiln.db import cli as db_cli  # boto3 loads only for this task

    options = {"backup": backup, "to_gtid": to_gtid, "to_time": to_time, "workdir": workdir, "keep": keep}
    options.update(lab=lab, ssh_user=ssh_user, to=to)
    _exit(db_cli.run(Project(roles=roles), action, secrets=secrets, as_json=json, out=out, **options))


ns = Collection(
    validate,
    render,
    keys,
    plan,
    apply,
    hosts,
    power,
    roll,
    test,
    bench,
    upload_ami,
    build,
    build_all,
    doctor,
    serve,
    tftp_root,
    reprovision,
    freeze,
    lab,
    db,
)
