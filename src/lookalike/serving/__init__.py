"""Serving: the REST contract and its logic, the MLflow pyfunc, packaging, the server process.

* :mod:`.recommender` -- the REST contract (module docstring) and :class:`Recommender`;
* :mod:`.pyfunc` -- the ``lookalike`` pyfunc (model + index + metadata) and how it is logged;
* :mod:`.package` -- a training run -> packaged, registered model version (alias challenger);
* :mod:`.server` -- ``mlflow models serve`` in the foreground or background;
* :mod:`.neighbours` -- batch "more like this" into Delta through the same pyfunc.
"""
