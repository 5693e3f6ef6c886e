"""The power driver of a host, from roles.yaml's hosts[].bmc and the login it names under secrets/."""

from __future__ import annotations

from pathlib import Path

from kiln.model import BmcDriver, Cluster
from kiln.power.chassis import Chassis, PowerError
from kiln.secrets import SecretMissing, SecretStore


def chassis(cluster: Cluster, name: str, secrets: SecretStore, *, roles_file: Path | None = None) -> Chassis:
    """The Chassis of host NAME; PowerError (naming the host) when roles.yaml has no such host or no bmc for it,
    or its credentials file is missing or malformed. `roles_file`: the lab's cluster file (lab driver only)."""
    try:
        host = cluster.host(name)
    except KeyError:
        raise PowerError(f"{name}: no such host in roles.yaml") from None
    bmc = host.bmc
    if bmc is None:
        raise PowerError(f"{name}: roles.yaml names no bmc for it (hosts[].bmc: {{driver: ipmi|redfish|lab, ...}})")
    if bmc.driver is BmcDriver.lab:
        return _lab(cluster, name, roles_file)
    assert bmc.address is not None and bmc.credentials is not None  # the model's meaning checks
    try:
        username, password = secrets.bmc_credentials(bmc.credentials)
    except SecretMissing as e:
        raise PowerError(f"{name}: {e}") from None
    if bmc.driver is BmcDriver.ipmi:
        from kiln.power.ipmi import Ipmi

        return Ipmi(name, bmc.address, username, password, cipher_suite=bmc.cipher_suite)
    from kiln.power.redfish import Redfish

    ca = secrets.path(bmc.ca) if bmc.ca else None
    if ca is not None and not ca.is_file():
        raise PowerError(f"{name}: {ca} is missing: put its BMC's CA certificate there (roles.yaml names it as bmc.ca)")
    return Redfish(name, bmc.address, username, password, system=bmc.system, ca=ca)


def _lab(cluster: Cluster, name: str, roles_file: Path | None) -> Chassis:
    from kiln.lab import lifecycle, netns, vm
    from kiln.lab.layout import Lab
    from kiln.power.lab import LabVm

    lab = Lab(cluster, roles_file=roles_file)
    host = cluster.host(name)

    def start(pxe_once: bool) -> None:
        """The lab's own start, as `lab up` booted its VMs (boot.json: pxe or disk), from inside its namespace."""
        if not netns.exists():
            raise PowerError(f"{name}: the lab is down (./inv lab up starts it)")
        if not lab.disk(host).exists():
            raise PowerError(f"{name}: the lab has no VM for it yet (no {lab.disk(host)}): ./inv lab up makes it")
        netns.enter()
        boot = lifecycle.boot_mode(lab)
        if pxe_once and boot == vm.DISK:  # the lab's install, as its disk boot has no installer (vm.reinstall)
            vm.reinstall(lab, host)
        else:
            vm.start(lab, host, boot, pxe_once=pxe_once)

    return LabVm(name, lab.qmp(host), start, running=lambda: vm.running(lab, host))
