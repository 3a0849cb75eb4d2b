"""Metric learning: data, model and backbones, training (one process or Horovod ranks),
tuning (Hyperopt SparkTrials), evaluation and its metrics and plots.

* :mod:`.data` -- products in Delta -> training batches (memory arrays or Petastorm);
* :mod:`.backbones` -- the open backbone registry; :mod:`.model` -- embedding model, save/load;
* :mod:`.distributed` -- the one training loop, in-process or per Horovod rank;
* :mod:`.training` -- ``lookalike train``: data -> training -> SavedModel -> evaluation in MLflow;
* :mod:`.tuning` -- ``lookalike tune``; :mod:`.params` -- tuned parameters, shared with training; :mod:`.evaluation`, :mod:`.metrics`, :mod:`.plots`;
* :mod:`.artifacts` -- a training run's model as a local folder, loaded once per process.
"""
