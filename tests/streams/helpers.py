"""Moved to `support.waiting` and `support.reading`; kept so files written before the move still import.

New tests import `from support.waiting import eventually` and `from support.reading import ...`.
"""

from support.reading import journal_events, stream_messages
from support.waiting import eventually

__all__ = ["eventually", "journal_events", "stream_messages"]
