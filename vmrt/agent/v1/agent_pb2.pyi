from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STDOUT: _ClassVar[Stream]
    STDERR: _ClassVar[Stream]
STDOUT: Stream
STDERR: Stream

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("agent_version", "kernel_release", "ready_at_uptime", "transport")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_RELEASE_FIELD_NUMBER: _ClassVar[int]
    READY_AT_UPTIME_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    kernel_release: str
    ready_at_uptime: float
    transport: str
    def __init__(self, agent_version: _Optional[str] = ..., kernel_release: _Optional[str] = ..., ready_at_uptime: _Optional[float] = ..., transport: _Optional[str] = ...) -> None: ...

class SysctlEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class DnsConfig(_message.Message):
    __slots__ = ("servers", "searches", "options")
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    servers: _containers.RepeatedScalarFieldContainer[str]
    searches: _containers.RepeatedScalarFieldContainer[str]
    options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, servers: _Optional[_Iterable[str]] = ..., searches: _Optional[_Iterable[str]] = ..., options: _Optional[_Iterable[str]] = ...) -> None: ...

class SetupSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "hostname", "dns", "sysctls", "host_time_ns", "share_tag", "entropy", "nic_mac_was", "nic_mac", "network")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    SYSCTLS_FIELD_NUMBER: _ClassVar[int]
    HOST_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    SHARE_TAG_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    NIC_MAC_WAS_FIELD_NUMBER: _ClassVar[int]
    NIC_MAC_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    hostname: str
    dns: DnsConfig
    sysctls: _containers.RepeatedCompositeFieldContainer[SysctlEntry]
    host_time_ns: int
    share_tag: str
    entropy: bytes
    nic_mac_was: str
    nic_mac: str
    network: ConfigureNetworkRequest
    def __init__(self, sandbox_id: _Optional[str] = ..., hostname: _Optional[str] = ..., dns: _Optional[_Union[DnsConfig, _Mapping]] = ..., sysctls: _Optional[_Iterable[_Union[SysctlEntry, _Mapping]]] = ..., host_time_ns: _Optional[int] = ..., share_tag: _Optional[str] = ..., entropy: _Optional[bytes] = ..., nic_mac_was: _Optional[str] = ..., nic_mac: _Optional[str] = ..., network: _Optional[_Union[ConfigureNetworkRequest, _Mapping]] = ...) -> None: ...

class SetupSandboxResponse(_message.Message):
    __slots__ = ("network_configured",)
    NETWORK_CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    network_configured: bool
    def __init__(self, network_configured: _Optional[bool] = ...) -> None: ...

class Interface(_message.Message):
    __slots__ = ("mac", "name", "mtu", "addresses")
    MAC_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    mac: str
    name: str
    mtu: int
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, mac: _Optional[str] = ..., name: _Optional[str] = ..., mtu: _Optional[int] = ..., addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("destination", "gateway", "interface")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    destination: str
    gateway: str
    interface: str
    def __init__(self, destination: _Optional[str] = ..., gateway: _Optional[str] = ..., interface: _Optional[str] = ...) -> None: ...

class ConfigureNetworkRequest(_message.Message):
    __slots__ = ("interfaces", "routes", "pod_ips")
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    POD_IPS_FIELD_NUMBER: _ClassVar[int]
    interfaces: _containers.RepeatedCompositeFieldContainer[Interface]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    pod_ips: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, interfaces: _Optional[_Iterable[_Union[Interface, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., pod_ips: _Optional[_Iterable[str]] = ...) -> None: ...

class ConfigureNetworkResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetClockRequest(_message.Message):
    __slots__ = ("host_time_ns",)
    HOST_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    host_time_ns: int
    def __init__(self, host_time_ns: _Optional[int] = ...) -> None: ...

class SetClockResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Rootfs(_message.Message):
    __slots__ = ("share_path", "guest_overlay")
    SHARE_PATH_FIELD_NUMBER: _ClassVar[int]
    GUEST_OVERLAY_FIELD_NUMBER: _ClassVar[int]
    share_path: str
    guest_overlay: bool
    def __init__(self, share_path: _Optional[str] = ..., guest_overlay: _Optional[bool] = ...) -> None: ...

class StdioOptions(_message.Message):
    __slots__ = ("terminal", "open_stdin", "stdin_once", "acked_output")
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    OPEN_STDIN_FIELD_NUMBER: _ClassVar[int]
    STDIN_ONCE_FIELD_NUMBER: _ClassVar[int]
    ACKED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    terminal: bool
    open_stdin: bool
    stdin_once: bool
    acked_output: bool
    def __init__(self, terminal: _Optional[bool] = ..., open_stdin: _Optional[bool] = ..., stdin_once: _Optional[bool] = ..., acked_output: _Optional[bool] = ...) -> None: ...

class CreateContainerRequest(_message.Message):
    __slots__ = ("container_id", "oci_spec", "rootfs", "stdio")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    OCI_SPEC_FIELD_NUMBER: _ClassVar[int]
    ROOTFS_FIELD_NUMBER: _ClassVar[int]
    STDIO_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    oci_spec: bytes
    rootfs: Rootfs
    stdio: StdioOptions
    def __init__(self, container_id: _Optional[str] = ..., oci_spec: _Optional[bytes] = ..., rootfs: _Optional[_Union[Rootfs, _Mapping]] = ..., stdio: _Optional[_Union[StdioOptions, _Mapping]] = ...) -> None: ...

class CreateContainerResponse(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class StartContainerRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class StartContainerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecProcessRequest(_message.Message):
    __slots__ = ("container_id", "exec_id", "process", "stdio")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    STDIO_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    process: bytes
    stdio: StdioOptions
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., process: _Optional[bytes] = ..., stdio: _Optional[_Union[StdioOptions, _Mapping]] = ...) -> None: ...

class ExecProcessResponse(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class SignalProcessRequest(_message.Message):
    __slots__ = ("container_id", "exec_id", "signal", "all")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    signal: int
    all: bool
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., signal: _Optional[int] = ..., all: _Optional[bool] = ...) -> None: ...

class SignalProcessResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WaitProcessRequest(_message.Message):
    __slots__ = ("container_id", "exec_id")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ...) -> None: ...

class ExitStatus(_message.Message):
    __slots__ = ("exit_code", "signal", "oom_killed", "started_at_ns", "finished_at_ns")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    signal: int
    oom_killed: bool
    started_at_ns: int
    finished_at_ns: int
    def __init__(self, exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., started_at_ns: _Optional[int] = ..., finished_at_ns: _Optional[int] = ...) -> None: ...

class WaitProcessResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ExitStatus
    def __init__(self, status: _Optional[_Union[ExitStatus, _Mapping]] = ...) -> None: ...

class RemoveContainerRequest(_message.Message):
    __slots__ = ("container_id", "force")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    force: bool
    def __init__(self, container_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RemoveContainerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveExecRequest(_message.Message):
    __slots__ = ("container_id", "exec_id")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ...) -> None: ...

class RemoveExecResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateContainerRequest(_message.Message):
    __slots__ = ("container_id", "resources")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    resources: bytes
    def __init__(self, container_id: _Optional[str] = ..., resources: _Optional[bytes] = ...) -> None: ...

class UpdateContainerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProcessesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProcessInfo(_message.Message):
    __slots__ = ("container_id", "exec_id", "pid", "state", "exit", "stdout_size", "stderr_size")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CREATED: _ClassVar[ProcessInfo.State]
        RUNNING: _ClassVar[ProcessInfo.State]
        EXITED: _ClassVar[ProcessInfo.State]
    CREATED: ProcessInfo.State
    RUNNING: ProcessInfo.State
    EXITED: ProcessInfo.State
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    STDOUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    STDERR_SIZE_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    pid: int
    state: ProcessInfo.State
    exit: ExitStatus
    stdout_size: int
    stderr_size: int
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., pid: _Optional[int] = ..., state: _Optional[_Union[ProcessInfo.State, str]] = ..., exit: _Optional[_Union[ExitStatus, _Mapping]] = ..., stdout_size: _Optional[int] = ..., stderr_size: _Optional[int] = ...) -> None: ...

class ListProcessesResponse(_message.Message):
    __slots__ = ("processes",)
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    processes: _containers.RepeatedCompositeFieldContainer[ProcessInfo]
    def __init__(self, processes: _Optional[_Iterable[_Union[ProcessInfo, _Mapping]]] = ...) -> None: ...

class ReadOutputRequest(_message.Message):
    __slots__ = ("container_id", "exec_id", "stream", "offset", "follow", "trim_sent")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TRIM_SENT_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    stream: Stream
    offset: int
    follow: bool
    trim_sent: bool
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., stream: _Optional[_Union[Stream, str]] = ..., offset: _Optional[int] = ..., follow: _Optional[bool] = ..., trim_sent: _Optional[bool] = ...) -> None: ...

class TrimOutputRequest(_message.Message):
    __slots__ = ("container_id", "exec_id", "stream", "offset")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    stream: Stream
    offset: int
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., stream: _Optional[_Union[Stream, str]] = ..., offset: _Optional[int] = ...) -> None: ...

class TrimOutputResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class WriteStdinRequest(_message.Message):
    __slots__ = ("container_id", "exec_id", "data", "close")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    data: bytes
    close: bool
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., data: _Optional[bytes] = ..., close: _Optional[bool] = ...) -> None: ...

class WriteStdinResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResizeTtyRequest(_message.Message):
    __slots__ = ("container_id", "exec_id", "rows", "cols")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    rows: int
    cols: int
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class ResizeTtyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetOnlineCpusRequest(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class SetOnlineCpusResponse(_message.Message):
    __slots__ = ("online",)
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    online: int
    def __init__(self, online: _Optional[int] = ...) -> None: ...

class ContainerStatsRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class ContainerStatsResponse(_message.Message):
    __slots__ = ("timestamp_ns", "cpu_usage_ns", "memory_usage_bytes", "memory_working_set_bytes", "memory_rss_bytes", "page_faults", "major_page_faults", "pids", "oom_kills", "interfaces", "guest_memory_total_bytes", "guest_memory_available_bytes", "cpu_user_ns", "cpu_system_ns", "cpu_periods", "cpu_throttled_periods", "cpu_throttled_ns", "memory_cache_bytes", "memory_mapped_file_bytes", "memory_kernel_bytes", "memory_swap_bytes", "memory_max_usage_bytes", "memory_limit_hits", "processes", "threads_max", "file_descriptors", "sockets", "devices")
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_NS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_WORKING_SET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGE_FAULTS_FIELD_NUMBER: _ClassVar[int]
    MAJOR_PAGE_FAULTS_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLS_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    GUEST_MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    GUEST_MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_USER_NS_FIELD_NUMBER: _ClassVar[int]
    CPU_SYSTEM_NS_FIELD_NUMBER: _ClassVar[int]
    CPU_PERIODS_FIELD_NUMBER: _ClassVar[int]
    CPU_THROTTLED_PERIODS_FIELD_NUMBER: _ClassVar[int]
    CPU_THROTTLED_NS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MAPPED_FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_KERNEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SWAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MAX_USAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_HITS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    THREADS_MAX_FIELD_NUMBER: _ClassVar[int]
    FILE_DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    SOCKETS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    timestamp_ns: int
    cpu_usage_ns: int
    memory_usage_bytes: int
    memory_working_set_bytes: int
    memory_rss_bytes: int
    page_faults: int
    major_page_faults: int
    pids: int
    oom_kills: int
    interfaces: _containers.RepeatedCompositeFieldContainer[InterfaceStats]
    guest_memory_total_bytes: int
    guest_memory_available_bytes: int
    cpu_user_ns: int
    cpu_system_ns: int
    cpu_periods: int
    cpu_throttled_periods: int
    cpu_throttled_ns: int
    memory_cache_bytes: int
    memory_mapped_file_bytes: int
    memory_kernel_bytes: int
    memory_swap_bytes: int
    memory_max_usage_bytes: int
    memory_limit_hits: int
    processes: int
    threads_max: int
    file_descriptors: int
    sockets: int
    devices: _containers.RepeatedCompositeFieldContainer[DeviceIo]
    def __init__(self, timestamp_ns: _Optional[int] = ..., cpu_usage_ns: _Optional[int] = ..., memory_usage_bytes: _Optional[int] = ..., memory_working_set_bytes: _Optional[int] = ..., memory_rss_bytes: _Optional[int] = ..., page_faults: _Optional[int] = ..., major_page_faults: _Optional[int] = ..., pids: _Optional[int] = ..., oom_kills: _Optional[int] = ..., interfaces: _Optional[_Iterable[_Union[InterfaceStats, _Mapping]]] = ..., guest_memory_total_bytes: _Optional[int] = ..., guest_memory_available_bytes: _Optional[int] = ..., cpu_user_ns: _Optional[int] = ..., cpu_system_ns: _Optional[int] = ..., cpu_periods: _Optional[int] = ..., cpu_throttled_periods: _Optional[int] = ..., cpu_throttled_ns: _Optional[int] = ..., memory_cache_bytes: _Optional[int] = ..., memory_mapped_file_bytes: _Optional[int] = ..., memory_kernel_bytes: _Optional[int] = ..., memory_swap_bytes: _Optional[int] = ..., memory_max_usage_bytes: _Optional[int] = ..., memory_limit_hits: _Optional[int] = ..., processes: _Optional[int] = ..., threads_max: _Optional[int] = ..., file_descriptors: _Optional[int] = ..., sockets: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[DeviceIo, _Mapping]]] = ...) -> None: ...

class InterfaceStats(_message.Message):
    __slots__ = ("name", "rx_bytes", "rx_errors", "tx_bytes", "tx_errors", "rx_packets", "rx_dropped", "tx_packets", "tx_dropped")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    RX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    RX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    TX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    TX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int
    rx_packets: int
    rx_dropped: int
    tx_packets: int
    tx_dropped: int
    def __init__(self, name: _Optional[str] = ..., rx_bytes: _Optional[int] = ..., rx_errors: _Optional[int] = ..., tx_bytes: _Optional[int] = ..., tx_errors: _Optional[int] = ..., rx_packets: _Optional[int] = ..., rx_dropped: _Optional[int] = ..., tx_packets: _Optional[int] = ..., tx_dropped: _Optional[int] = ...) -> None: ...

class DeviceIo(_message.Message):
    __slots__ = ("major", "minor", "read_bytes", "write_bytes", "reads", "writes")
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    READS_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    major: int
    minor: int
    read_bytes: int
    write_bytes: int
    reads: int
    writes: int
    def __init__(self, major: _Optional[int] = ..., minor: _Optional[int] = ..., read_bytes: _Optional[int] = ..., write_bytes: _Optional[int] = ..., reads: _Optional[int] = ..., writes: _Optional[int] = ...) -> None: ...

class PortForwardData(_message.Message):
    __slots__ = ("port", "data")
    PORT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    port: int
    data: bytes
    def __init__(self, port: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetEventsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Event(_message.Message):
    __slots__ = ("container_id", "exec_id", "kind", "exit")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        EXIT: _ClassVar[Event.Kind]
        OOM: _ClassVar[Event.Kind]
    EXIT: Event.Kind
    OOM: Event.Kind
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    kind: Event.Kind
    exit: ExitStatus
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., kind: _Optional[_Union[Event.Kind, str]] = ..., exit: _Optional[_Union[ExitStatus, _Mapping]] = ...) -> None: ...
