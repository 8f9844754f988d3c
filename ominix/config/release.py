"""The release section: MOF release metadata, licenses, and what the bundle holds (``ominix mof``)."""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from ominix.config.section import Section


class LicenseRef(Section):
    """A license by SPDX id, and where its text lies in the release."""

    name: str | None = Field(None, description="SPDX license id, e.g. Apache-2.0.")
    path: str | None = Field(None, description="Path of the license text inside the release.")


class ReleaseLicenses(Section):
    """Licenses per content type, as in MOF's release.license."""

    distribution: LicenseRef = Field(default_factory=LicenseRef, description="Fallback license.")
    code: LicenseRef = Field(default_factory=LicenseRef, description="License of code components.")
    data: LicenseRef = Field(default_factory=LicenseRef, description="License of data components.")
    document: LicenseRef = Field(
        default_factory=LicenseRef, description="License of document components."
    )


class ReleaseConfig(Section):
    """Release metadata for the MOF bundle (also loadable alone from a release.yaml)."""

    name: str | None = Field(None, description="Model name; None = run directory name.")
    version: str = Field("1.0", description="Release version.")
    date: str | None = Field(None, description="Release date YYYY-MM-DD; None = today.")
    type: str = Field("language", description="MOF model type.")
    architecture: str = Field("transformer decoder", description="MOF architecture.")
    origin: str = Field("", description="Base model if fine-tuned; empty for pretraining.")
    producer: str = Field("", description="Who produced the model.")
    contact: str = Field("", description="Contact e-mail or URL.")
    repository: str = Field("", description="Source repository URL.")
    huggingface: str = Field("", description="Hub location of the weights.")
    licenses: ReleaseLicenses = Field(
        default_factory=ReleaseLicenses, description="Licenses per content type."
    )
    technical_report: str | None = Field(None, description="Path of the technical report.")
    research_paper: str | None = Field(None, description="Path of the research paper.")
    data: Literal["auto", "copy", "link", "reference"] = Field(
        "auto",
        description="Prepared data in the bundle: copy (independent copies), link (hard links where on "
        "the same filesystem, else copies), reference (where the source is, the `ominix data prepare` "
        "command and the shard checksums); auto = link when on the bundle's filesystem or under 2 GiB, "
        "else reference.",
    )
    intermediate: list[int] | None = Field(
        None, description="Steps of the intermediate checkpoints the bundle holds, each exported to the "
        "Hugging Face format; None = every checkpoint the run kept before the final one; [] = none."
    )
    optimizer_state: bool = Field(
        False, description="Also put the checkpoints' optimizer and scheduler state in the bundle."
    )
    intended_use: str = Field(
        "Research on language-model pretraining and a base for fine-tuning; not tuned to follow "
        "instructions or for any deployment.",
        description="Intended use, written into the model card.",
    )
    limitations: str = Field(
        "A base model: it continues text, may produce wrong, biased or offensive output and has no "
        "safety tuning; its knowledge is limited to the training data.",
        description="Known limitations, written into the model card.",
    )

    @field_validator("date", mode="before")
    @classmethod
    def _date_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2025-01-31 as a date; MOF wants the text.
        return value.isoformat() if isinstance(value, datetime.date) else value
