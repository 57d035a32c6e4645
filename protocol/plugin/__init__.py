"""What the Krita and GIMP plug-ins share: everything of a fill that does not need the host.

A plug-in keeps only the host glue (read the layer and the selection, write the new layer,
show dialogs). The rest lives here, so both hosts behave alike and it is tested without a
host: the crop around the selection (``geometry``), host pixel layouts and bit depths
(``host_pixels``), the settings file and the log (``settings``), the connection check
(``connection``), the sentences an artist sees (``errors``), grow/shrink and feather of
the selection (``selection_edit``), the server's models for the settings (``model_picker``)
and the fill itself, on a worker thread (``fill``). The installer vendors this package, with the rest of
``inpaintd.protocol``, into each plug-in.

It builds on the protocol core (the client, the codec, the errors); the core never imports
it, and neither does the server (pyproject.toml, ``[tool.importlinter]``).
"""
