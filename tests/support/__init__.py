"""Helpers the tests share: servers and raw clients (``server``), the plug-in checks
(``plugins``), the official refinement as a reference (``refine_reference``), where
``../shared`` is (``shared_data``), a studio's slow download (``studio_download``), the
fill options' cases (``fill_options``). A package of its own so that pytest never collects
a helper as a test module (none is named ``test_*``)."""
