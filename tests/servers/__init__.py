"""Real servers for the test suite: nats-server, SeaweedFS (S3) and a small static HTTP server.

Each server is a child process (or a thread) on 127.0.0.1 with ports chosen at start, so test runs
never collide with each other or with a developer's own services. Every wait is bounded and a failed
start raises with the server's log, which is the first thing needed to understand it.
"""

from tests.servers.http import RecordedRequest, StaticHTTPServer
from tests.servers.nats import NatsCluster, NatsServer, start_nats, start_nats_cluster
from tests.servers.processes import find_binary
from tests.servers.s3 import S3Server, start_s3

__all__ = [
    "NatsCluster",
    "NatsServer",
    "RecordedRequest",
    "S3Server",
    "StaticHTTPServer",
    "find_binary",
    "start_nats",
    "start_nats_cluster",
    "start_s3",
]
