"""The base of every config section: unknown keys are errors, assignments are validated, and a
float must be finite (``.inf`` or ``nan`` as a learning rate or a temperature is a typo, never a
setting)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
