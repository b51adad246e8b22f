"""Desired state, computed from the store by pure functions, and diffs against the kernel."""
