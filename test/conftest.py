"""Test-suite wide configuration: the real-server fixtures live in ``test/support``."""

pytest_plugins = [
    "support.faultserver",
    "support.servers",
    "support.dns_server",
    "support.reliability",
    "support.celery_workers",
]
