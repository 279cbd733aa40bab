"""llama2rlhf-example: the example plugin, and the template for writing your own.

The package itself does nothing on import; the core loads :mod:`llama2rlhf_example.plugin`
through the entry point declared in ``pyproject.toml``::

    [project.entry-points.llama2rlhf]
    example = "llama2rlhf_example.plugin"
"""

__version__ = "0.1.0"
