"""Remove contacts from LeadLex email campaigns in bulk: paced, resumable, truthful."""

from importlib.metadata import version

from .config import JobConfig, ReadOptions, RetryPolicy, Secret
from .errors import (
    AuthError,
    BulkUnenrollError,
    InputError,
    ResultsFileError,
    SetupError,
    UnsupportedPlatform,
)
from .limits import Plan, Rate
from .models import Enrollment, Outcome, RowResult, StopReason, Summary
from .plan import SendPlan
from .send.runner import Job, Progress, run_job, unenroll_file

__version__ = version("bulk-unenroll")

__all__ = [
    "AuthError",
    "BulkUnenrollError",
    "Enrollment",
    "InputError",
    "Job",
    "JobConfig",
    "Outcome",
    "Plan",
    "Progress",
    "Rate",
    "ReadOptions",
    "ResultsFileError",
    "RetryPolicy",
    "RowResult",
    "Secret",
    "SendPlan",
    "SetupError",
    "StopReason",
    "Summary",
    "UnsupportedPlatform",
    "__version__",
    "run_job",
    "unenroll_file",
]
