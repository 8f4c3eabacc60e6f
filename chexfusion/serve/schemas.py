"""The JSON the demo answers with, as pydantic models: they are the OpenAPI schema clients read."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

View = Literal["frontal", "lateral", "unknown"]
Group = Literal["head", "medium", "tail", "unseen"]


class Finding(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class", description="the class, named as in the run's label set")
    probability: float = Field(ge=0.0, le=1.0, description="the study's probability of the finding")
    group: Group = Field(description="training prevalence: head > 10%, medium 1-10%, tail < 1%; unseen: a name "
                                     "the run was not trained on (asked for in 'classes', scored zero-shot)")
    train_prevalence: float | None = Field(description="fraction of training images with the finding (null: unseen)")


class Study(BaseModel):
    aggregation: Literal["fusion", "max"] = Field(
        description="fusion: one stage-2 prediction from all images together; "
                    "max: stage-1 run, each image scored alone and the study takes the maximum")
    findings: list[Finding] = Field(description="every class, most probable first")


class ImageInfo(BaseModel):
    name: str = Field(description="the uploaded file's name")
    format: Literal["JPEG", "PNG", "DICOM"] = Field(description="from the file's content, not its name")
    view: View
    view_source: Literal["user", "dicom", "default"] = Field(
        description="user: chosen in the request; dicom: from ViewPosition / ViewCodeSequence; "
                    "default: neither, so unknown")
    width: int = Field(description="original width in pixels")
    height: int = Field(description="original height in pixels")
    used: bool = Field(description="false for images past the run's max_images (frontal first)")
    preview: str = Field(description="the model input (what the model saw) as a JPEG data URL")
    display_aspect: float = Field(
        description="width / height to draw the preview and its heat maps at: the model input is squashed "
                    "to a square unless the run letterboxes")


class HeatMaps(BaseModel):
    height: int = Field(description="rows of every grid (the backbone map's grid per image)")
    width: int = Field(description="columns of every grid")
    scaling: str = Field(description="how grid values are scaled")
    method: Literal["attention", "gradcam", "hirescam", "groupcam"] = Field(
        default="attention", description="what the maps are: the decoder's attention, Grad-CAM, HiResCAM or Group-CAM")
    mapped: list[str] | None = Field(
        default=None, description="the classes that have a map (null: all); Group-CAM maps the most probable few")
    query_of_class: dict[str, int] = Field(
        description="decoder query whose attention is each class's map; classes sharing a query share a map")
    images: list[dict[str, list[list[float]]] | None] = Field(
        description="per image (request order): class -> [height][width] grid; null for an image not scored")


class PredictResponse(BaseModel):
    run: str
    kind: Literal["stage1", "stage2"]
    study: Study
    images: list[ImageInfo]
    heatmaps: HeatMaps


class Limits(BaseModel):
    max_file_bytes: int
    max_request_bytes: int
    max_images: int
    max_pixels: int


class Health(BaseModel):
    status: Literal["ok"]
    run: str
    kind: Literal["stage1", "stage2"]
    classes: list[str]
    scores_other_names: bool = Field(description="true for a run trained with text queries: a request's "
                                                 "'classes' field may name any findings (zero-shot)")
    max_images_scored: int | None = Field(description="images per study the model scores (stage 2), None: all")
    limits: Limits


class ErrorResponse(BaseModel):
    detail: str = Field(description="one line naming the file or field at fault")
