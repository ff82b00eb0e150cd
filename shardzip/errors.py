"""One exception hierarchy for everything shardzip raises on purpose.

Every message names the thing that is wrong and what the user can do about it.
"""

from __future__ import annotations


class ShardzipError(Exception):
    """Base class of all errors shardzip raises deliberately."""


class CodingError(ShardzipError):
    """An entropy-coding operation could not be carried out."""


class ModelParameterError(CodingError):
    """Entropy-model parameters are out of range (alphabet, precision, scale, shapes)."""


class SymbolRangeError(CodingError):
    """A symbol lies outside the alphabet of the model it is coded with."""


class MessageFormatError(CodingError):
    """Serialized message bytes are truncated, corrupted or of an unknown version."""


class MessageUnderflowError(CodingError):
    """A pop needed more bits than the message holds (bits-back without enough initial bits)."""


class DecodeMismatchError(CodingError):
    """Decoding did not retrace encoding: wrong model, wrong order, or a corrupted message."""


class NumericsError(ShardzipError):
    """Deterministic numerics cannot be guaranteed (e.g. a lookup table failed its checksum)."""


class FormatError(ShardzipError):
    """A compressed store, shard or chunk is malformed, incomplete or of an unknown version."""


class ChunkChecksumError(FormatError):
    """A decoded chunk's bytes do not match the checksum stored with it."""


class SourceError(ShardzipError):
    """The source dataset is missing, unreadable or holds something that cannot be compressed as asked."""


class DestinationError(ShardzipError):
    """The destination exists, is incomplete or belongs to another job."""


class ClusterError(ShardzipError):
    """The Dask scheduler cannot be reached or has no worker that can run the job."""


class JobInterrupted(ShardzipError):
    """The user stopped a job (Ctrl-C); the message says what was committed. The command exits 130."""

    exit_code = 130


class CatalogError(ShardzipError):
    """catalog.yaml is missing, invalid, or does not name what was asked for."""


class CheckpointError(ShardzipError):
    """A checkpoint file is missing or does not match the sha256 the catalog records."""


class ImportDataError(ShardzipError):
    """An input file is missing, unreadable or holds something an importer cannot keep exactly."""


class FitError(ShardzipError):
    """A fit cannot start or go on as asked (bad budget, no usable data, a foreign checkpoint)."""


class ReportError(ShardzipError):
    """A report dict is malformed, or a baseline was asked for by a name that does not exist."""


class ModelRulesError(ShardzipError):
    """A model (another package's family) breaks the rules a coding model must keep: its code cannot be trusted."""


class ShardTaskError(ShardzipError):
    """A shard task failed on every attempt."""
