"""Commands for the bioimage.io model zoo: ``ijtorch Export bioimage.io Model`` and
``ijtorch Import bioimage.io Model``.

They call :mod:`ijtorch.bioimageio` (the same functions as ``ijtorch export-bioimageio`` /
``import-bioimageio``) and report to ImageJ's Log. An
imported model is then selectable by name in Segment / Restore / Classify.

Macro::

    run("ijtorch Export bioimage.io Model", "model=nuclei output=[/path/nuclei.zip] author=[Jane Doe]");
    run("ijtorch Import bioimage.io Model", "package=[/path/model.zip] name=zoo-model");
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from .command import command
from .outputs import CommandInputs, CommandOutputs

__all__ = ["ExportBioimageioParams", "ImportBioimageioParams", "export_text", "import_text", "import_options"]


class ExportBioimageioParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="model name or model folder to export")
    output: str = Field(..., description="package .zip to write")
    author: str = Field("", description="author name(s), comma-separated (default: the model's, else ijtorch)")
    license: str = Field("", description="SPDX licence id (default: the model's, else MIT)")
    run_test: bool = Field(True, description="check the package with bioimageio.core's model test")


class ImportTask(str, Enum):
    auto = "auto"
    segment = "segment"
    restore = "restore"
    classify = "classify"


class ImportBioimageioParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    package: str = Field(..., description="bioimage.io package .zip or folder with rdf.yaml")
    name: str = Field("", description="model name (default: the package's name)")
    task: ImportTask = Field(ImportTask.auto, description="task that runs a foreign package (auto: from the package)")
    overwrite: bool = Field(False, description="replace a user model of the same name")
    threshold: float = Field(0.0, ge=0, lt=1, description="foreground threshold of a foreign package's one-channel "
                             "segmentation output; 0 = the package's binarize threshold, else 0.5")


def import_options(p: ImportBioimageioParams) -> dict:
    """The keyword arguments of :func:`ijtorch.bioimageio.package_import.import_bioimageio` for ``p``
    (besides the package): the one translation of every surface (empty name / auto task / 0 = default)."""
    return dict(name=p.name or None, task=None if p.task == ImportTask.auto else p.task.value, overwrite=p.overwrite,
                threshold=p.threshold or None)


def export_text(p: ExportBioimageioParams) -> str:
    """Export as the command does; the Log line."""
    from ..bioimageio.export import export_bioimageio

    authors = [a.strip() for a in p.author.split(",") if a.strip()] or None
    r = export_bioimageio(p.model, p.output, authors=authors, license=p.license or None, run_test=p.run_test)
    return (f"ijtorch Export bioimage.io Model: {r.path} ({r.model_type}); bioimageio.spec {r.format_status}; "
            f"bioimageio.core test_model {r.test_status or 'not run'}")


def import_text(p: ImportBioimageioParams) -> str:
    """Import as the command does; the Log line."""
    from ..bioimageio.package_import import import_bioimageio

    r = import_bioimageio(p.package, **import_options(p))
    return (f"ijtorch Import bioimage.io Model: {r.name} registered ({r.model_type}, {r.weights_format} weights); "
            f"run it with ijtorch {r.task.capitalize()}")


@command("ijtorch Export bioimage.io Model", ExportBioimageioParams, needs_image=False)
def export_bioimageio_command(inputs: CommandInputs, p: ExportBioimageioParams) -> CommandOutputs:
    """Write a bioimage.io package (format 0.5, TorchScript + state dict) of a model; validated and tested."""
    return CommandOutputs(log=(export_text(p),))


@command("ijtorch Import bioimage.io Model", ImportBioimageioParams, needs_image=False, verb="import-bioimageio")
def import_bioimageio_command(inputs: CommandInputs, p: ImportBioimageioParams) -> CommandOutputs:
    """Register a local bioimage.io package as an ijtorch model (nothing downloaded, no package code run)."""
    return CommandOutputs(log=(import_text(p),))
