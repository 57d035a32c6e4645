"""Installing the host plug-ins, split by host: :mod:`.common` (targets, wheels, vendoring,
the server record, zips), :mod:`.krita` and :mod:`.gimp` (where each host looks, how it
enables a plug-in, bundles). ``inpaintd plugin`` (:mod:`inpaintd.host_plugins.plugin_cli`)
runs them; :mod:`inpaintd.host_plugins.installer` re-exports all three for older imports.
"""
