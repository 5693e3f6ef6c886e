"""kiln: hardened role images, a first-boot agent and the server they talk to, from one roles.yaml."""

__version__ = "0.1.0"
