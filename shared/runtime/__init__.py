"""The stage runtime: taking work by priority, running a handler, acknowledging, retrying, dead-lettering,
and what every long-running process does besides (start-up, heartbeats, metrics, leases)."""
