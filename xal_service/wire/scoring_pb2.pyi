from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]

class UncertaintyKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNCERTAINTY_UNSPECIFIED: _ClassVar[UncertaintyKind]
    UNCERTAINTY_ENTROPY: _ClassVar[UncertaintyKind]
    UNCERTAINTY_MARGIN: _ClassVar[UncertaintyKind]
    UNCERTAINTY_LEAST_CONFIDENCE: _ClassVar[UncertaintyKind]

class Fusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_UNSPECIFIED: _ClassVar[Fusion]
    FUSION_WEIGHTED: _ClassVar[Fusion]
    FUSION_RANK: _ClassVar[Fusion]

class MissingRoiPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MISSING_ROI_UNSPECIFIED: _ClassVar[MissingRoiPolicy]
    MISSING_ROI_UNCERTAINTY_ONLY: _ClassVar[MissingRoiPolicy]
    MISSING_ROI_EXCLUDE: _ClassVar[MissingRoiPolicy]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_QUEUED: _ClassVar[JobState]
    JOB_RUNNING: _ClassVar[JobState]
    JOB_SUCCEEDED: _ClassVar[JobState]
    JOB_FAILED: _ClassVar[JobState]
    JOB_CANCELLED: _ClassVar[JobState]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
DTYPE_UINT8: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
UNCERTAINTY_UNSPECIFIED: UncertaintyKind
UNCERTAINTY_ENTROPY: UncertaintyKind
UNCERTAINTY_MARGIN: UncertaintyKind
UNCERTAINTY_LEAST_CONFIDENCE: UncertaintyKind
FUSION_UNSPECIFIED: Fusion
FUSION_WEIGHTED: Fusion
FUSION_RANK: Fusion
MISSING_ROI_UNSPECIFIED: MissingRoiPolicy
MISSING_ROI_UNCERTAINTY_ONLY: MissingRoiPolicy
MISSING_ROI_EXCLUDE: MissingRoiPolicy
JOB_STATE_UNSPECIFIED: JobState
JOB_QUEUED: JobState
JOB_RUNNING: JobState
JOB_SUCCEEDED: JobState
JOB_FAILED: JobState
JOB_CANCELLED: JobState

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RoiBatch(_message.Message):
    __slots__ = ("height", "width", "masks", "boxes")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    masks: PackedMasks
    boxes: Boxes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., masks: _Optional[_Union[PackedMasks, _Mapping]] = ..., boxes: _Optional[_Union[Boxes, _Mapping]] = ...) -> None: ...

class PackedMasks(_message.Message):
    __slots__ = ("packed", "known")
    PACKED_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    packed: Tensor
    known: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, packed: _Optional[_Union[Tensor, _Mapping]] = ..., known: _Optional[_Iterable[bool]] = ...) -> None: ...

class Boxes(_message.Message):
    __slots__ = ("boxes", "counts")
    BOXES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    boxes: Tensor
    counts: Tensor
    def __init__(self, boxes: _Optional[_Union[Tensor, _Mapping]] = ..., counts: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoringParameters(_message.Message):
    __slots__ = ("uncertainty", "weight", "threshold", "fusion", "missing_roi")
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    MISSING_ROI_FIELD_NUMBER: _ClassVar[int]
    uncertainty: UncertaintyKind
    weight: float
    threshold: float
    fusion: Fusion
    missing_roi: MissingRoiPolicy
    def __init__(self, uncertainty: _Optional[_Union[UncertaintyKind, str]] = ..., weight: _Optional[float] = ..., threshold: _Optional[float] = ..., fusion: _Optional[_Union[Fusion, str]] = ..., missing_roi: _Optional[_Union[MissingRoiPolicy, str]] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("ids", "logits", "features", "cam_weights", "roi", "parameters")
    IDS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CAM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ROI_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    logits: Tensor
    features: Tensor
    cam_weights: Tensor
    roi: RoiBatch
    parameters: ScoringParameters
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., features: _Optional[_Union[Tensor, _Mapping]] = ..., cam_weights: _Optional[_Union[Tensor, _Mapping]] = ..., roi: _Optional[_Union[RoiBatch, _Mapping]] = ..., parameters: _Optional[_Union[ScoringParameters, _Mapping]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("ids", "score", "uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit", "predicted_class", "invalid", "excluded", "n_invalid", "roi_clipped")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    DICE_FIELD_NUMBER: _ClassVar[int]
    SOFT_DICE_FIELD_NUMBER: _ClassVar[int]
    ROI_ENERGY_FIELD_NUMBER: _ClassVar[int]
    POINTING_HIT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    N_INVALID_FIELD_NUMBER: _ClassVar[int]
    ROI_CLIPPED_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    score: _containers.RepeatedScalarFieldContainer[float]
    uncertainty: _containers.RepeatedScalarFieldContainer[float]
    dice: _containers.RepeatedScalarFieldContainer[float]
    soft_dice: _containers.RepeatedScalarFieldContainer[float]
    roi_energy: _containers.RepeatedScalarFieldContainer[float]
    pointing_hit: _containers.RepeatedScalarFieldContainer[float]
    predicted_class: _containers.RepeatedScalarFieldContainer[int]
    invalid: _containers.RepeatedScalarFieldContainer[bool]
    excluded: _containers.RepeatedScalarFieldContainer[bool]
    n_invalid: int
    roi_clipped: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., score: _Optional[_Iterable[float]] = ..., uncertainty: _Optional[_Iterable[float]] = ..., dice: _Optional[_Iterable[float]] = ..., soft_dice: _Optional[_Iterable[float]] = ..., roi_energy: _Optional[_Iterable[float]] = ..., pointing_hit: _Optional[_Iterable[float]] = ..., predicted_class: _Optional[_Iterable[int]] = ..., invalid: _Optional[_Iterable[bool]] = ..., excluded: _Optional[_Iterable[bool]] = ..., n_invalid: _Optional[int] = ..., roi_clipped: _Optional[_Iterable[bool]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "path", "chunk")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    chunk: bytes
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "format", "runtime", "class_names", "input_shape", "outputs", "target_layer", "xal_version", "metadata", "ready")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    XAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: str
    runtime: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    target_layer: str
    xal_version: str
    metadata: _containers.ScalarMap[str, str]
    ready: bool
    def __init__(self, name: _Optional[str] = ..., format: _Optional[str] = ..., runtime: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., input_shape: _Optional[_Iterable[int]] = ..., outputs: _Optional[_Iterable[str]] = ..., target_layer: _Optional[str] = ..., xal_version: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., ready: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelMetadataRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RegisterPoolRequest(_message.Message):
    __slots__ = ("name", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class PoolInfo(_message.Message):
    __slots__ = ("name", "path", "size", "roi_kinds", "preprocessing")
    class PreprocessingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROI_KINDS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    size: int
    roi_kinds: _containers.RepeatedScalarFieldContainer[str]
    preprocessing: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., roi_kinds: _Optional[_Iterable[str]] = ..., preprocessing: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListPoolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolInfo]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolInfo, _Mapping]]] = ...) -> None: ...

class DescribePoolRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class StartScoringRequest(_message.Message):
    __slots__ = ("model", "pool", "parameters", "k", "exclude_ids", "idempotency_key")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    model: str
    pool: str
    parameters: ScoringParameters
    k: int
    exclude_ids: _containers.RepeatedScalarFieldContainer[int]
    idempotency_key: str
    def __init__(self, model: _Optional[str] = ..., pool: _Optional[str] = ..., parameters: _Optional[_Union[ScoringParameters, _Mapping]] = ..., k: _Optional[int] = ..., exclude_ids: _Optional[_Iterable[int]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class StartScoringResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: int
    reason: str
    def __init__(self, id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "state", "items_done", "items_total", "items_per_second", "eta_seconds", "error", "item_errors", "n_item_errors", "model", "pool", "ranked", "ranking_note")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_DONE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ITEM_ERRORS_FIELD_NUMBER: _ClassVar[int]
    N_ITEM_ERRORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    RANKED_FIELD_NUMBER: _ClassVar[int]
    RANKING_NOTE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    items_done: int
    items_total: int
    items_per_second: float
    eta_seconds: float
    error: str
    item_errors: _containers.RepeatedCompositeFieldContainer[ItemError]
    n_item_errors: int
    model: str
    pool: str
    ranked: int
    ranking_note: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., items_done: _Optional[int] = ..., items_total: _Optional[int] = ..., items_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., error: _Optional[str] = ..., item_errors: _Optional[_Iterable[_Union[ItemError, _Mapping]]] = ..., n_item_errors: _Optional[int] = ..., model: _Optional[str] = ..., pool: _Optional[str] = ..., ranked: _Optional[int] = ..., ranking_note: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class GetRankingRequest(_message.Message):
    __slots__ = ("job_id", "page_size")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    page_size: int
    def __init__(self, job_id: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class RankedItem(_message.Message):
    __slots__ = ("id", "rank", "score", "uncertainty", "dice", "soft_dice", "roi_energy", "predicted_class", "probabilities", "source_id", "pointing_hit")
    ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    DICE_FIELD_NUMBER: _ClassVar[int]
    SOFT_DICE_FIELD_NUMBER: _ClassVar[int]
    ROI_ENERGY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    POINTING_HIT_FIELD_NUMBER: _ClassVar[int]
    id: int
    rank: int
    score: float
    uncertainty: float
    dice: float
    soft_dice: float
    roi_energy: float
    predicted_class: int
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    source_id: str
    pointing_hit: float
    def __init__(self, id: _Optional[int] = ..., rank: _Optional[int] = ..., score: _Optional[float] = ..., uncertainty: _Optional[float] = ..., dice: _Optional[float] = ..., soft_dice: _Optional[float] = ..., roi_energy: _Optional[float] = ..., predicted_class: _Optional[int] = ..., probabilities: _Optional[_Iterable[float]] = ..., source_id: _Optional[str] = ..., pointing_hit: _Optional[float] = ...) -> None: ...

class RankingPage(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RankedItem]
    def __init__(self, items: _Optional[_Iterable[_Union[RankedItem, _Mapping]]] = ...) -> None: ...

class GetItemScoresRequest(_message.Message):
    __slots__ = ("job_id", "page_size")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    page_size: int
    def __init__(self, job_id: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class ItemScore(_message.Message):
    __slots__ = ("id", "source_id", "score", "uncertainty", "dice", "soft_dice", "roi_energy", "pointing_hit", "predicted_class", "probabilities", "invalid", "excluded")
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    DICE_FIELD_NUMBER: _ClassVar[int]
    SOFT_DICE_FIELD_NUMBER: _ClassVar[int]
    ROI_ENERGY_FIELD_NUMBER: _ClassVar[int]
    POINTING_HIT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    id: int
    source_id: str
    score: float
    uncertainty: float
    dice: float
    soft_dice: float
    roi_energy: float
    pointing_hit: float
    predicted_class: int
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    invalid: bool
    excluded: bool
    def __init__(self, id: _Optional[int] = ..., source_id: _Optional[str] = ..., score: _Optional[float] = ..., uncertainty: _Optional[float] = ..., dice: _Optional[float] = ..., soft_dice: _Optional[float] = ..., roi_energy: _Optional[float] = ..., pointing_hit: _Optional[float] = ..., predicted_class: _Optional[int] = ..., probabilities: _Optional[_Iterable[float]] = ..., invalid: _Optional[bool] = ..., excluded: _Optional[bool] = ...) -> None: ...

class ItemScoresPage(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ItemScore]
    def __init__(self, items: _Optional[_Iterable[_Union[ItemScore, _Mapping]]] = ...) -> None: ...

class StatisticsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Counter(_message.Message):
    __slots__ = ("count", "failures", "seconds", "items")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    count: int
    failures: int
    seconds: float
    items: int
    def __init__(self, count: _Optional[int] = ..., failures: _Optional[int] = ..., seconds: _Optional[float] = ..., items: _Optional[int] = ...) -> None: ...

class StatisticsResponse(_message.Message):
    __slots__ = ("rpcs", "stages", "uptime_seconds")
    class RpcsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Counter
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Counter, _Mapping]] = ...) -> None: ...
    class StagesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Counter
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Counter, _Mapping]] = ...) -> None: ...
    RPCS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    rpcs: _containers.MessageMap[str, Counter]
    stages: _containers.MessageMap[str, Counter]
    uptime_seconds: float
    def __init__(self, rpcs: _Optional[_Mapping[str, Counter]] = ..., stages: _Optional[_Mapping[str, Counter]] = ..., uptime_seconds: _Optional[float] = ...) -> None: ...
