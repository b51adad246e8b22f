"""The embedded resolver at 127.0.0.11 inside every endpoint namespace (like Docker's)."""
