"""Run untrusted commands under Landlock and seccomp from async Python."""

from ._changes import Change as Change
from ._exceptions import ConfinementUnavailable as ConfinementUnavailable
from ._exceptions import PolicyError as PolicyError
from ._exceptions import SandboxedProcessError as SandboxedProcessError
from ._exceptions import SandboxError as SandboxError
from ._exceptions import SpawnError as SpawnError
from ._features import Capabilities as Capabilities
from ._features import probe as probe
from ._groups import SYSCALL_GROUPS as SYSCALL_GROUPS
from ._groups import path_argument as path_argument
from ._groups import read_path as read_path
from ._handler import ExceptionPolicy as ExceptionPolicy
from ._handler import Handler as Handler
from ._inputs import inputs as inputs
from ._kernel._notify import HandlerCtx as HandlerCtx
from ._kernel._notify import NotifAction as NotifAction
from ._network import NetworkInfo as NetworkInfo
from ._pipeline import Gather as Gather
from ._pipeline import Pipeline as Pipeline
from ._pipeline import PipelineResult as PipelineResult
from ._pipeline import Stage as Stage
from ._policy import SYSTEM_READABLE as SYSTEM_READABLE
from ._policy import Sandbox as Sandbox
from ._process import SandboxedProcess as SandboxedProcess
from ._refusal import allow_degraded as allow_degraded
from ._refusal import strict as strict
from ._result import Result as Result
from ._run import DEVNULL as DEVNULL
from ._run import PIPE as PIPE
from ._run import STDOUT as STDOUT
from ._types import ExitReason as ExitReason
from ._types import Protection as Protection
from ._types import Subsystem as Subsystem
from ._workspace import Workspace as Workspace
from ._workspace import WorkspaceConflict as WorkspaceConflict

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "SYSCALL_GROUPS",
    "SYSTEM_READABLE",
    "Capabilities",
    "Change",
    "ConfinementUnavailable",
    "ExceptionPolicy",
    "ExitReason",
    "Gather",
    "Handler",
    "HandlerCtx",
    "NetworkInfo",
    "NotifAction",
    "Pipeline",
    "PipelineResult",
    "PolicyError",
    "Protection",
    "Result",
    "Sandbox",
    "SandboxError",
    "SandboxedProcess",
    "SandboxedProcessError",
    "SpawnError",
    "Stage",
    "Subsystem",
    "Workspace",
    "WorkspaceConflict",
    "allow_degraded",
    "inputs",
    "path_argument",
    "probe",
    "read_path",
    "strict",
]
