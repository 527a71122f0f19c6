"""EVALUATE: the rules of one shard against the market events of its symbols.

``engine`` (``ShardEngine``, and ``EvaluateShard``, the state of the evaluate step) fires a rule
on the edge of its condition tree, within its cooldown; ``specs`` defines every condition type
(the models rules are validated with), ``conditions`` evaluates them, ``market_state`` and
``indicators`` keep the per-symbol prices, bars and indicators they read; ``routing`` says which
shard holds a symbol and which shards a rule lives in.

May import: the top-level domain modules (``messages``, ``fields``, ``ids``, ``event_time``,
``safety``, ``market_calendar``, ``config``). Never ``connectors``, ``sinks``, Bytewax,
``dataflow``, ``cli``, nor the other stages.
"""
