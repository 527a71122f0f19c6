"""What rule authors touch: rule text (``text``, with its grammar in ``grammar.lark``) and
rule templates (``templates``, the YAML files in ``templates/``).

May import: the top-level domain modules and ``evaluate.specs`` (the condition types a text or
a template names). Never ``connectors``, ``sinks``, Bytewax, ``dataflow`` or ``cli``.
"""
