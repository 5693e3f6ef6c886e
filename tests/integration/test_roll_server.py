"""The roll's rearm and join phases against a real `./inv serve`: rearm is reprovision's own work on the server's
database, and the install phase follows the host's record as the server keeps it (GET /v1/hosts) until the host,
enrolling again with its new token, reports done; a failed step fails the phase naming the host and the step."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from kiln.model import Host
from kiln.project import Project
from kiln.roll import cli as roll_cli
from kiln.roll import hostops
from kiln.roll.transport import Local
from tests.integration.kiln_server import RunningServer, running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Project]]:
    tmp = tmp_path_factory.mktemp("roll-serve")
    with running_server(tmp) as server:
        yield server, Project(roles=server.roles, root=tmp)  # root/secrets: the server's secrets


def world(server: RunningServer, project: Project) -> hostops.World:
    cluster = project.cluster()
    w = roll_cli.world(project, cluster, Local({}), lab=False, database=server.database)
    # the operator's client asks the server where it listens (an ephemeral port), not roles.yaml's URL
    from kiln import fleet
    from kiln.operator import Server

    client = Server.of(cluster, project.secrets, url=server.tls_url)

    def host_state(name: str) -> dict[str, object]:
        return next(h for h in fleet.fetch(client).hosts if h["name"] == name)

    w.host_state = host_state
    w.forget_host_key = lambda host: None
    w.sleep = lambda _: time.sleep(0.1)  # poll the server every 0.1 s, not every 5
    return w


def provision(server: RunningServer, host: Host, steps: list[tuple[str, str]]) -> None:
    """What the installer and the agent report for HOST after its rearm."""
    client = server.host(host.name, host.mac)
    assert client.enrol().status_code == 200
    for step, status in steps:
        assert client.event(step, status, f"{step} {status}").status_code in (200, 201)


def test_rearm_then_the_install_phase_waits_for_joined(served: tuple[RunningServer, Project]) -> None:
    server, project = served
    w = world(server, project)
    web1 = project.cluster().host("web1")
    w.rearm(web1)
    assert w.host_state("web1")["state"] == "waiting"
    reporter = threading.Timer(
        0.5, provision, (server, web1, [("install", "start"), ("install", "ok"), ("done", "ok")])
    )
    reporter.start()
    install = next(p for p in hostops.phases(w, web1, "image") if p.name == "install")
    install.act()  # returns once the server says joined
    reporter.join()
    assert w.host_state("web1")["state"] == "joined"


def test_a_failed_step_fails_the_install_phase_naming_host_and_step(served: tuple[RunningServer, Project]) -> None:
    server, project = served
    w = world(server, project)
    app1 = project.cluster().host("app1")
    w.rearm(app1)
    provision(server, app1, [("install", "start"), ("install", "ok"), ("join", "start"), ("join", "fail")])
    install = next(p for p in hostops.phases(w, app1, "image") if p.name == "install")
    with pytest.raises(hostops.HostError, match=r"app1: provisioning failed at join: join fail"):
        install.act()
