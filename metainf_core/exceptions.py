"""The few error classes the core raises; each subclasses a builtin so callers may catch either."""


class MetainfError(Exception):
    """Base class of every error the core raises on purpose."""


class DatasetNotFoundError(MetainfError, FileNotFoundError):
    """A dataset's files are absent and cannot be downloaded here."""


class CheckpointError(MetainfError, ValueError):
    """A checkpoint is missing, truncated, mismatched or unsafe to load."""


class UnsafeFileError(CheckpointError):
    """A file would need unpickling arbitrary objects; it is refused, never executed."""


class ConfigError(MetainfError, ValueError):
    """A configuration value is out of range or inconsistent."""


class TaskNotFoundError(MetainfError, KeyError):
    """A task id is not in the taskset."""


class CacheError(MetainfError, ValueError):
    """A cached or shipped result that cannot be used (missing, altered, or for other inputs)."""


class TrainingStopped(MetainfError):
    """Training was asked to stop (SIGTERM or Ctrl-C); its state up to the last step is saved."""


class NotFittedError(MetainfError, RuntimeError):
    """Scores were asked of an Explainer before ``fit()`` (pyDVL's NotFittedException)."""
