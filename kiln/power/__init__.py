"""Power control of the cluster's machines through their BMC: chassis power on, off, cycle and status, and a
one-time boot device override (PXE on the next boot). One interface (chassis.py), one module per driver (ipmi.py,
redfish.py, lab.py), chosen per host by roles.yaml's hosts[].bmc.driver (select.py); control.py runs an action and
waits until the BMC confirms the new state. docs/power.md.
"""
