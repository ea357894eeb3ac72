"""Typed errors raised by the event-data layer.

Every problem with user-supplied events or files surfaces as one of these, with a message that says what is wrong
and where, instead of an exception from deep inside numpy.
"""


class EventDataError(ValueError):
    """Base class for every error about event data or recordings."""


class EventValidationError(EventDataError):
    """Events that break the contract: unsorted or negative timestamps, coordinates off the sensor, bad polarity."""


class RecordingFormatError(EventDataError):
    """A file that is not a recording we can read: foreign, truncated or with a malformed header."""


class LabelFormatError(EventDataError):
    """A box-label file whose dtype or values are not a Gen1 / Prophesee label array."""
