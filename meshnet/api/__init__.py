"""The agent's HTTP surfaces (server.py) and the CLI's client over the unix socket (client.py)."""
