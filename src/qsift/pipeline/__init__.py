"""One message from receipt to a certain answer: decode, check, decide per recipient, act.

stages.py runs the stages on an inflight.py message; client.py reads the client qsift-queue vouches for;
blocked.py quarantines, rejects, bounces or discards blocked recipients and sends the notices; answer.py
folds the recipients' fates into the one answer the listener gives. build.py makes a pipeline and every
part it works with (parts.py, checking.py, blocked.py: each with a null object for a setup without it);
slots.py is its one mutable part, the messages in progress.
"""

from qsift.pipeline.build import build_pipeline, open_quarantine
from qsift.pipeline.stages import Pipeline

__all__ = ["Pipeline", "build_pipeline", "open_quarantine"]
