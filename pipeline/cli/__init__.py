"""The ``smart-alerts`` command line: ``main`` parses the arguments and prints errors,
``commands`` does each verb, ``demo`` and ``backtest`` run the job on the embedded stack and on
files. It sits above everything: it may import every package, ``connectors`` and ``sinks``.
"""
