"""VS-9 Smart Alerts: the job's domain logic, one package per stage, and its wiring.

- ``evaluate``: EVALUATE, rules against market events (engine, conditions, indicators).
- ``personalize``: PERSONALIZE and CONSOLIDATE, what reaches each user and when.
- ``rules``: what rule authors touch: rule text and templates.
- ``cli``: the ``smart-alerts`` verbs (above everything else).

At the top, what every stage reads: ``messages`` (every message) and ``fields``, ``parsing`` and
``ingest`` (records to keyed messages), ``event_time`` (markers, watermarks, the start-up gate),
``safety`` (the dead-letter safety net), ``config``, ``ids``, ``metrics``, ``market_calendar``,
``schemas``; and ``dataflow``, the only module that imports Bytewax.

Import rule (tests/unit/test_import_rules.py): the stages and the top-level domain modules never
import ``connectors``, ``sinks`` or Bytewax, nor ``dataflow`` or ``cli``; stages do not import
each other, except ``rules`` reading ``evaluate``'s condition specs. ``dataflow`` and ``cli`` sit
above them all.
"""
