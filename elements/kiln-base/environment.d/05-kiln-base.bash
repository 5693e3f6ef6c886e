export DIB_RELEASE=${DIB_RELEASE:-bookworm}
export DIB_BOOTLOADER_DEFAULT_CMDLINE=${DIB_BOOTLOADER_DEFAULT_CMDLINE:-"nofb nomodeset gfxpayload=text apparmor=1 security=apparmor audit=1 audit_backlog_limit=8192"}
export DIB_KILN_ADMIN_NETS=${DIB_KILN_ADMIN_NETS:-10.0.0.0/8}
