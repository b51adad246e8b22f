"""Membership gossip: SWIM + Lifeguard failure detection as a pure state machine (`swim`)
and an in-memory, virtual-clock network to run many of them at once (`sim`)."""

from meshnet.gossip.swim import (
    Ack,
    Event,
    Gossip,
    MemberState,
    Message,
    Nack,
    Outgoing,
    Ping,
    PingReq,
    Status,
    Swim,
    SwimConfig,
    Update,
    decode,
)

__all__ = [
    "Ack",
    "Event",
    "Gossip",
    "MemberState",
    "Message",
    "Nack",
    "Outgoing",
    "Ping",
    "PingReq",
    "Status",
    "Swim",
    "SwimConfig",
    "Update",
    "decode",
]
