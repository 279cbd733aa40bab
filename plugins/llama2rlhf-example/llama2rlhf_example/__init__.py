"""llama2rlhf-example: the example plugin, and the template for writing your own.

One plugin of every kind, each in a module named after its kind (``samplers``,
``selectors``, ``augmenters``, ``stages``, ``annotators``, ``loggers``, ``reward_losses``,
``reward_combiners``). The package itself does nothing on import; the core loads
:mod:`llama2rlhf_example.plugin`, which holds every hook and imports the rest, through the
entry point declared in ``pyproject.toml``::

    [project.entry-points.llama2rlhf]
    example = "llama2rlhf_example.plugin"
"""

__version__ = "0.1.0"
