"""meshnet: encrypted overlay networks for Linux hosts, one agent per host."""

__version__ = "0.1.0"
