from dasgd.v1 import membership_pb2 as _membership_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_KIND_UNSPECIFIED: _ClassVar[UpdateKind]
    GRADIENT: _ClassVar[UpdateKind]
    DELTA: _ClassVar[UpdateKind]
    MODEL: _ClassVar[UpdateKind]
    CENTER_COMMIT: _ClassVar[UpdateKind]
    CENTER: _ClassVar[UpdateKind]
    ROUND_MODEL: _ClassVar[UpdateKind]
    GOSSIP_MODEL: _ClassVar[UpdateKind]
    GOSSIP_REPLY: _ClassVar[UpdateKind]
    BUFFERS: _ClassVar[UpdateKind]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_UNSPECIFIED: _ClassVar[Codec]
    RAW_F32: _ClassVar[Codec]
    F16: _ClassVar[Codec]
    BF16: _ClassVar[Codec]
UPDATE_KIND_UNSPECIFIED: UpdateKind
GRADIENT: UpdateKind
DELTA: UpdateKind
MODEL: UpdateKind
CENTER_COMMIT: UpdateKind
CENTER: UpdateKind
ROUND_MODEL: UpdateKind
GOSSIP_MODEL: UpdateKind
GOSSIP_REPLY: UpdateKind
BUFFERS: UpdateKind
CODEC_UNSPECIFIED: Codec
RAW_F32: Codec
F16: Codec
BF16: Codec

class TensorSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("run_id", "sender_id", "sequence", "kind", "vector_clock", "tensors", "codec", "scale", "total_bytes", "round", "clock_ticks", "sender_address", "inline_payload", "resent")
    class VectorClockEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VECTOR_CLOCK_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLOCK_TICKS_FIELD_NUMBER: _ClassVar[int]
    SENDER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INLINE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RESENT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    sender_id: str
    sequence: int
    kind: UpdateKind
    vector_clock: _containers.ScalarMap[str, int]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    codec: Codec
    scale: float
    total_bytes: int
    round: int
    clock_ticks: int
    sender_address: str
    inline_payload: bytes
    resent: bool
    def __init__(self, run_id: _Optional[str] = ..., sender_id: _Optional[str] = ..., sequence: _Optional[int] = ..., kind: _Optional[_Union[UpdateKind, str]] = ..., vector_clock: _Optional[_Mapping[str, int]] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., codec: _Optional[_Union[Codec, str]] = ..., scale: _Optional[float] = ..., total_bytes: _Optional[int] = ..., round: _Optional[int] = ..., clock_ticks: _Optional[int] = ..., sender_address: _Optional[str] = ..., inline_payload: _Optional[bytes] = ..., resent: _Optional[bool] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushAck(_message.Message):
    __slots__ = ("accepted", "last_sequence")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    last_sequence: int
    def __init__(self, accepted: _Optional[int] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("run_id", "requester_id", "kind", "codec")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    requester_id: str
    kind: UpdateKind
    codec: Codec
    def __init__(self, run_id: _Optional[str] = ..., requester_id: _Optional[str] = ..., kind: _Optional[_Union[UpdateKind, str]] = ..., codec: _Optional[_Union[Codec, str]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("evaluations_since",)
    EVALUATIONS_SINCE_FIELD_NUMBER: _ClassVar[int]
    evaluations_since: float
    def __init__(self, evaluations_since: _Optional[float] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("at", "step", "accuracy", "loss")
    AT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    at: float
    step: int
    accuracy: float
    loss: float
    def __init__(self, at: _Optional[float] = ..., step: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ...) -> None: ...

class StalenessStats(_message.Message):
    __slots__ = ("count", "avg", "max", "p50", "p95", "p99")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    AVG_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    count: int
    avg: float
    max: int
    p50: float
    p95: float
    p99: float
    def __init__(self, count: _Optional[int] = ..., avg: _Optional[float] = ..., max: _Optional[int] = ..., p50: _Optional[float] = ..., p95: _Optional[float] = ..., p99: _Optional[float] = ...) -> None: ...

class NeighborStatus(_message.Message):
    __slots__ = ("id", "address", "queue_depth", "updates_sent", "bytes_sent", "updates_applied", "dropped", "coalesced", "send_errors", "staleness", "sending", "resent")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    UPDATES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    UPDATES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    SEND_ERRORS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    SENDING_FIELD_NUMBER: _ClassVar[int]
    RESENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    queue_depth: int
    updates_sent: int
    bytes_sent: int
    updates_applied: int
    dropped: int
    coalesced: int
    send_errors: int
    staleness: StalenessStats
    sending: bool
    resent: int
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., queue_depth: _Optional[int] = ..., updates_sent: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., updates_applied: _Optional[int] = ..., dropped: _Optional[int] = ..., coalesced: _Optional[int] = ..., send_errors: _Optional[int] = ..., staleness: _Optional[_Union[StalenessStats, _Mapping]] = ..., sending: _Optional[bool] = ..., resent: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("id", "run_id", "address", "strategy", "workload", "state", "step", "loss", "accuracy", "accuracy_at", "staleness", "neighbors", "updates_applied", "updates_rejected", "bytes_sent", "bytes_received", "vector_clock", "samples_per_s", "uptime_s", "membership_version", "version", "first_step_at", "warm_started_from", "initial_accuracy", "resumed_step", "checkpoint_step", "evaluations", "samples", "updates_discarded", "bootstrap", "bootstrap_reachable", "bootstrap_unreachable_since", "bootstrap_error", "bootstrap_ever_joined")
    class VectorClockEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_AT_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    UPDATES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    UPDATES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    VECTOR_CLOCK_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FIRST_STEP_AT_FIELD_NUMBER: _ClassVar[int]
    WARM_STARTED_FROM_FIELD_NUMBER: _ClassVar[int]
    INITIAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    RESUMED_STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    UPDATES_DISCARDED_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_UNREACHABLE_SINCE_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_ERROR_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_EVER_JOINED_FIELD_NUMBER: _ClassVar[int]
    id: str
    run_id: str
    address: str
    strategy: str
    workload: str
    state: str
    step: int
    loss: float
    accuracy: float
    accuracy_at: float
    staleness: StalenessStats
    neighbors: _containers.RepeatedCompositeFieldContainer[NeighborStatus]
    updates_applied: int
    updates_rejected: int
    bytes_sent: int
    bytes_received: int
    vector_clock: _containers.ScalarMap[str, int]
    samples_per_s: float
    uptime_s: float
    membership_version: int
    version: str
    first_step_at: float
    warm_started_from: str
    initial_accuracy: float
    resumed_step: int
    checkpoint_step: int
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    samples: int
    updates_discarded: int
    bootstrap: str
    bootstrap_reachable: bool
    bootstrap_unreachable_since: float
    bootstrap_error: str
    bootstrap_ever_joined: bool
    def __init__(self, id: _Optional[str] = ..., run_id: _Optional[str] = ..., address: _Optional[str] = ..., strategy: _Optional[str] = ..., workload: _Optional[str] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., accuracy_at: _Optional[float] = ..., staleness: _Optional[_Union[StalenessStats, _Mapping]] = ..., neighbors: _Optional[_Iterable[_Union[NeighborStatus, _Mapping]]] = ..., updates_applied: _Optional[int] = ..., updates_rejected: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., vector_clock: _Optional[_Mapping[str, int]] = ..., samples_per_s: _Optional[float] = ..., uptime_s: _Optional[float] = ..., membership_version: _Optional[int] = ..., version: _Optional[str] = ..., first_step_at: _Optional[float] = ..., warm_started_from: _Optional[str] = ..., initial_accuracy: _Optional[float] = ..., resumed_step: _Optional[int] = ..., checkpoint_step: _Optional[int] = ..., evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., samples: _Optional[int] = ..., updates_discarded: _Optional[int] = ..., bootstrap: _Optional[str] = ..., bootstrap_reachable: _Optional[bool] = ..., bootstrap_unreachable_since: _Optional[float] = ..., bootstrap_error: _Optional[str] = ..., bootstrap_ever_joined: _Optional[bool] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ("run_id", "known")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    known: _containers.RepeatedCompositeFieldContainer[_membership_pb2.Member]
    def __init__(self, run_id: _Optional[str] = ..., known: _Optional[_Iterable[_Union[_membership_pb2.Member, _Mapping]]] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("members", "membership_version")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_VERSION_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[_membership_pb2.Member]
    membership_version: int
    def __init__(self, members: _Optional[_Iterable[_Union[_membership_pb2.Member, _Mapping]]] = ..., membership_version: _Optional[int] = ...) -> None: ...

class LeaveNowRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeaveNowResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...
