"""firstboot: the on-host agent that turns a freshly booted role image into a member of the cluster.

It finds the provisioning server (kernel command line, installer seed, EC2 user-data, baked URL), fetches
this host's signed bundle over HTTPS with the cluster CA pinned, verifies it, then applies it in idempotent,
resumable steps and joins the role. It does no templating: the bundle is rendered centrally.
"""

__version__ = "0.1.0"
