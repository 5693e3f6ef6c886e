"""The lab: the reference cluster booted in QEMU (TCG) on this machine, inside a network namespace kiln owns.

Namespace `kiln-lab` holds the bridge `kiln-lab-br`, one tap `kiln-lab-<host>` per VM, dnsmasq, the
provisioning server and the VMs; the cluster subnet's addresses exist only there. State, logs and
disks live under state/lab/.
"""
