"""Scale-out: Ray actors behind the ZeroMQ front end (``inpaintd serve --ray ADDRESS``).

The front end stays everything a client sees (queue, fairness, cancel, progress, limits,
CURVE); Ray only replaces the one local worker process with a pool of actors, one per GPU,
on any number of machines. Nothing here is imported unless ``--ray`` is given, so the
single-box server needs no Ray.

- :mod:`.actor`: the actor, which runs the same pipeline as the local worker.
- :mod:`.pool`: the actors as the engine sees them: dispatch, liveness, resubmission.
"""
