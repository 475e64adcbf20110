"""``ann2snn serve``: a local web app over a runs directory: launch QANN training, SNN tests and conversions, follow
them live, browse and compare run records.

Needs the ``ui`` extra (``pip install "ann2snn[ui]"``: Starlette, uvicorn, Jinja2); ``import ann2snn`` never
imports this package. Jobs are ``ann2snn`` CLI commands run as subprocesses (:mod:`ann2snn.web.jobs`), form
input is checked by the CLI's own parsers (:mod:`ann2snn.web.forms`), the app itself is
:func:`ann2snn.web.app.create_app`.
"""
