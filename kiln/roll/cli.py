"""`./inv roll --role ROLE [--hosts A,B] [--batch N] [--reboot-only] [--allow-outage] [--probe URL] [--lab]`:
wire roles.yaml, the provisioning server, the power drivers and SSH to the roll, show it, say how it ended."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from kiln.model import Cluster, Host
from kiln.project import Project
from kiln.roll import hostops, plan, state, steps
from kiln.roll.progress import Progress, summary
from kiln.roll.runtime import Haproxies
from kiln.roll.transport import Ssh, Transport


def _err(line: str) -> None:
    print(f"roll: {line}", file=sys.stderr)


def transport_for(cluster: Cluster, *, lab: bool, roles_file: Path | None) -> Transport:
    """SSH as the admin account: the lab's key and known_hosts from inside its namespace, else the operator's."""
    if lab:
        from kiln.lab import netns
        from kiln.lab import ssh as lab_ssh
        from kiln.lab.layout import Lab

        netns.enter()  # the lab's hosts answer only inside its network namespace
        the_lab = Lab(cluster, roles_file=roles_file)
        return Ssh(the_lab.admin_user, tuple(lab_ssh.options(the_lab)))
    return Ssh(cluster.access.admin_user, ("-o", "StrictHostKeyChecking=accept-new"))


def world(
    project: Project, cluster: Cluster, transport: Transport, *, lab: bool, database: str | None
) -> hostops.World:
    from kiln import fleet
    from kiln.operator import Server
    from kiln.power import control, select
    from kiln.run import run
    from kiln.secrets import SecretStore
    from kiln.server.cli import reprovision_command

    secrets = SecretStore(project.secrets)
    server = Server.of(cluster, project.secrets)
    roles_file = project.roles_path.resolve() if project.roles else None

    if lab and database is None:  # the lab's server keeps its own database (kiln.lab.layout.Lab.database)
        from kiln.lab.layout import Lab

        database = f"sqlite:///{Lab(cluster, roles_file=roles_file).database}"

    def rearm(host: Host) -> None:
        if reprovision_command(project, host=host.name, database=database) != 0:
            raise hostops.HostError(f"{host.name}: re-arming failed (the line above says why)")

    def power_pxe(host: Host) -> None:
        control.run(select.chassis(cluster, host.name, secrets, roles_file=roles_file), "cycle", pxe=True)

    def host_state(name: str) -> dict[str, Any]:
        found = [h for h in fleet.fetch(server).hosts if h["name"] == name]
        if not found:
            raise hostops.HostError(f"{name}: the provisioning server does not list it")
        return found[0]

    def switchover(to: str) -> None:
        from kiln.db import topology

        if topology.run(project, cluster, secrets, "switchover", to=to, lab=lab) != 0:
            raise hostops.HostError(f"{to}: the switchover to it failed (the lines above say why)")

    def forget(host: Host) -> None:
        if lab:
            from kiln.lab import ssh as lab_ssh
            from kiln.lab.layout import Lab

            lab_ssh.forget(Lab(cluster, roles_file=roles_file), str(host.ip))
        else:
            run(["ssh-keygen", "-R", str(host.ip)], check=False)

    return hostops.World(
        cluster=cluster,
        transport=transport,
        haproxies=Haproxies(transport, cluster.by_role("lb")),
        rearm=rearm,
        power_pxe=power_pxe,
        host_state=host_state,
        switchover=switchover,
        forget_host_key=forget,
    )


def healthy(w: hostops.World, role: str) -> set[str]:
    """The hosts of ROLE healthy now: UP on every LB for web, joined at the server for the others."""
    if role == "web":
        return w.haproxies.up_everywhere()
    names = {h.name for h in w.cluster.by_role(role)}
    joined = set()
    for name in names:
        try:
            if w.host_state(name).get("state") == "joined":
                joined.add(name)
        except hostops.HostError:
            pass
    return joined


def roll(
    project: Project,
    role: str,
    *,
    hosts: Sequence[str] = (),
    batch: int = 1,
    reboot_only: bool = False,
    allow_outage: bool = False,
    probe: str | None = None,
    lab: bool = False,
    database: str | None = None,
    drain_timeout: float = 30.0,
) -> int:
    """Exit 0 when every planned host rolled; 1 with what failed (naming the host) and how to resume; 2 for a
    roll that cannot be planned as asked."""
    cluster = project.load_or_report()
    if cluster is None:
        return 1
    mode = state.REBOOT if reboot_only else state.IMAGE
    path = project.state / "roll.json"
    try:
        planned = plan.plan(cluster, role, hosts, batch)
    except (plan.PlanError, ValueError) as e:
        _err(str(e))
        return 2
    try:
        transport = transport_for(cluster, lab=lab, roles_file=project.roles_path.resolve() if project.roles else None)
    except RuntimeError as e:  # the lab is down
        _err(str(e))
        return 1
    w = world(project, cluster, transport, lab=lab, database=database)
    w.timeouts = hostops.Timeouts(drain=drain_timeout)
    batches = [list(b) for b in planned.batches]
    try:
        if mode == state.REBOOT and not (path.exists() and _resumable(path, role, mode)):
            wanting = [h for h in planned.hosts if hostops.needs_reboot(w, cluster.host(h))]
            if not wanting:
                print(f"no {role} host needs a reboot ({hostops.REBOOT_REQUIRED} is on none)")
                return 0
            batches = [[h] for h in wanting]
        run, resumed = state.begin(path, role, mode, batches)
    except (state.StateError, hostops.HostError) as e:
        _err(str(e))
        return 1
    if resumed:
        left = ", ".join(h for b in run.remaining() for h in b)
        print(f"resuming the {role} roll in {path}: {left}")
    console = Console(stderr=False)
    view = Progress(list(run.hosts), console, live=console.is_terminal)
    probing = None
    if probe:
        from kiln.roll.probe import Probe

        probing = Probe(probe, ca=project.secrets / "ca.pem").start()
    job = steps.Job(
        path=path,
        state=run,
        tier=[h.name for h in cluster.by_role(role)],
        phases=lambda name: hostops.phases(w, cluster.host(name), mode),
        healthy=lambda: healthy(w, role),
        allow_outage=allow_outage,
    )
    try:
        with view.shown():
            outcome = steps.roll(job, view)
    finally:
        tally = probing.stop() if probing else None
    if outcome.rolled or tally is not None:
        console.print(summary({h: run.hosts[h].seconds for h in outcome.rolled}, tally))
    flag = " --reboot-only" if reboot_only else ""
    again = f"./inv roll --role {role}{flag}{' --lab' if lab else ''}"
    if outcome.refused:
        _err(f"{outcome.refused}; nothing more was touched. {again} resumes ({path})")
        return 1
    if outcome.failed:
        failed = run.hosts[outcome.failed]
        _err(f"{failed.error}")
        _err(
            f"stopped at {outcome.failed} (phase {failed.phase}); it is left out of rotation, the hosts after it are "
            f"untouched. Fix it, then {again} resumes with it ({path})"
        )
        return 1
    print(f"rolled every {role} host of the roll: {', '.join(run.hosts)}")
    return 0


def _resumable(path: Path, role: str, mode: str) -> bool:
    old = state.load(path)
    return old is not None and not old.finished() and (old.role, old.mode) == (role, mode) and old.touched()
