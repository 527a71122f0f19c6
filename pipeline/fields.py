"""What every field of an input message obeys, whatever its model (docs/contracts.md, Field bounds).

- **Numbers are JSON numbers, never booleans.** Pydantic's lax mode reads ``true`` as 1, so a
  producer's ``"price": true`` would become a price of 1.0. ``NUMBER`` goes last in a numeric
  field's ``Annotated`` (after its ``Field`` bounds, so the bounds still reach the JSON Schema
  as ``minimum`` / ``exclusiveMinimum``). Integers stay valid where floats are expected; NaN and
  infinities are refused by the models' ``allow_inf_nan=False``.
- **Market and position numbers stay within ±10^15** (``MAX_MAGNITUDE``, ``MAX_COUNT``): no
  real price, size or volume comes near it, and sums and products of such numbers (indicator
  windows, premiums, P&L) cannot overflow a float, where ``math.fsum`` would raise. Condition
  parameters are only compared with those numbers and need no such bound.
- **Text has no NUL** (U+0000): PostgreSQL cannot store it in a text column, so a NUL accepted
  here would stop the job later in a sink. The ``NUL_FREE`` pattern says so in the JSON Schema.
- **Patterns spell digits ``[0-9]``**: pydantic's regex engine reads ``\\d`` as any Unicode digit
  (``٣``), which no consumer of a phone number or a date expects.
"""

from __future__ import annotations

from typing import Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

MAX_MAGNITUDE = 1e15
MAX_COUNT = 10**15  # the same bound for integer counts (sizes, volumes)
MAX_INT32 = 2_147_483_647  # PostgreSQL ``int`` columns hold versions and per-hour budgets
NUL_FREE = r"^[^\x00]*$"
NUL_MESSAGE = "contains a NUL character"


def _not_a_boolean(value: Any) -> Any:
    if value is True or value is False:
        raise PydanticCustomError(
            "bool_not_number", "expected a number, got {value}", {"value": str(value).lower()}
        )
    return value


NUMBER = BeforeValidator(_not_a_boolean)
