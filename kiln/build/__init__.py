"""Building the role images with diskimage-builder and the PXE installer: ./inv build, ./inv build-all.

plan       which elements and DIB_* settings each role image gets (from roles.yaml)
mirror     the Debian mirror of the host's apt sources (`mirror: auto`)
inputs     the inputs hash that decides whether an image is up to date
stage      what the elements copy in from the host: the frozen agent, trust material, app wheels
devmapper  kpartx/dmsetup stand-ins for hosts without device-mapper
dib        disk-image-create's command line, environment and log phases
builder    one role image, written whole or not at all; manifest.json
installer  the PXE installer kernel + initramfs
progress   the per-image progress display
commands   the task bodies
"""
