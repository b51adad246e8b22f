"""The only code that touches the kernel: netlink, wireguard-go's UAPI, subprocesses."""
