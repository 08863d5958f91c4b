"""The shared layer: the wire protocol, stores, queues, clocks and process runtime every service imports.

The edge gateway process itself is the sub-package :mod:`streaming.gateway`; nothing here imports it (or any
other process package), see ARCHITECTURE.md.
"""
