"""Remove contacts from LeadLex email campaigns in bulk: paced, resumable, truthful."""

from importlib.metadata import version

from .config import JobConfig, Plan, Rate, ReadOptions, RetryPolicy, Secret
from .errors import AuthError, BulkUnenrollError, InputError, ResultsFileError, SetupError
from .models import Enrollment, Outcome, RowResult, StopReason, Summary
from .reader import SendPlan
from .runner import Job, Progress, run_job, unenroll_file

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
    "__version__",
    "run_job",
    "unenroll_file",
]
