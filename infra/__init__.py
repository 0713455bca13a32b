"""Deployment and development infrastructure; ``infra.local_servers`` starts the team servers on 127.0.0.1 (``make servers``, and the tests)."""
