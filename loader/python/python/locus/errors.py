"""Errors a caller can catch by kind. Each also derives from the matching built-in class."""


class LocusError(Exception):
    """Base class of every locus error."""


class NotFoundError(LocusError, FileNotFoundError):
    """A file, tensor, repo, revision or URI that does not exist."""


class MalformedError(LocusError, ValueError):
    """Bytes that are not a valid safetensors file or checkpoint."""


class UnavailableError(LocusError, ConnectionError):
    """The daemon or the origin could not be reached, or failed."""


class InvalidArgumentError(LocusError, ValueError):
    """A bad argument, such as a malformed URI."""
