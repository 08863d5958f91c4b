"""Topologies: a local nats-server, the whole pipeline on one machine (``mvs demo``), the ``mvs`` CLI."""
