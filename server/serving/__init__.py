"""Serving: everything ``inpaintd serve`` runs, from the socket to the worker process.

- :mod:`.service`: the front end. The ROUTER socket, CURVE, admission and limits, fair
  queues, cancel and progress; no torch (it imports the engines lazily).
- :mod:`.options`: every ``serve`` option, defined once (``ServerConfig`` and the parser).
- :mod:`.engine_api`: the one interface the front end drives (``JobEngine``), which
  :mod:`.local_engine` (one worker process on this machine) and :mod:`.ray` (actors on a Ray
  cluster, ``--ray``) implement.
- :mod:`.worker`: the process that owns the device and runs the pipeline;
  :mod:`.worker_channel`: the typed records between it and the local engine.
- :mod:`.keys`: the CURVE keypair and the client allow-list.
- :mod:`.refusals`: refused connections, counted by reason and logged once per peer and
  minute.

Below the command line (:mod:`inpaintd.server.cli`, which it never imports); above
inference, models and weights, which never import it. Never imports the host plug-ins.
"""
