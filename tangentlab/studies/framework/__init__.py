"""What every study shares.

* :mod:`.config`: typed (dataclass) configurations, presets, ``--set`` / TOML / YAML
  overrides and validation with one-line errors;
* :mod:`.store`: the run directory, tidy result tables appended atomically, checkpoints;
* :mod:`.report`: the HTML report (claims table, figures, tables);
* :mod:`.runner`: the :class:`~.runner.Study` base class, ``run_study`` and ``report_run``;
* :mod:`.parallel`: units of work split across ``torchrun`` ranks;
* :mod:`.data`, :mod:`.datasets`: datasets (embedded, generated, and loaders of files on disk);
* :mod:`.models`: small models (MLP, CNN, ResNet, VGG) with their initializations;
* :mod:`.probes`: kernel probes evaluated during training (also usable as a library);
* :mod:`.threads`: thread-pool limits for the duration of a block.

The training loop itself (seeded minibatch streams, the step, and
:class:`~tangentlab.training.TrainingCheckpoint`, the one way a training run saves and
resumes) is the library's :mod:`tangentlab.training`.
"""
