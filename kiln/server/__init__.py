"""The provisioning server (`./inv serve`): iPXE scripts and images over HTTP, signed bundles and host
events over HTTPS, host state in SQLite (or PostgreSQL), and a live dashboard.

  inputs    parsing what clients send: MACs, event bodies
  alerts    Alertmanager's webhook notifications (POST /v1/alerts), checked, and how GET /v1/alerts lists them
  states    the host state machine: which state an event leads to, progress
  store     the state database (SQLAlchemy Core): hosts, events, unknown machines, one-time secrets
  ipxe      the iPXE scripts: chain, install, boot from disk, unknown machine, not built yet
  bundles   rendered bundles per host (cached), secrets filled once, signed
  app       the Starlette applications for the two listeners
  main      configuration, startup banner, two uvicorn servers on one event loop
"""
