"""Notification channels: one module per provider, each a Sender (sinks/channels/base.py)."""
