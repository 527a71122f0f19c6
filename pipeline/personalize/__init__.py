"""PERSONALIZE and CONSOLIDATE: what reaches each user, when, and on which channels.

``desk`` (``UserDesk`` per user, ``DeskShard`` per personalization key) applies profiles,
mutes, relevance, consolidation windows, staleness, budgets and quiet hours; ``learning`` keeps
the relevance scores learnt from feedback; ``consolidation`` the event-time windows and the
notification text; ``quiet_hours`` the users' quiet periods.

May import: the top-level domain modules (``messages``, ``ids``, ``event_time``, ``safety``,
``market_calendar``, ``config``). Never ``connectors``, ``sinks``, Bytewax, ``dataflow``,
``cli``, nor the other stages.
"""
