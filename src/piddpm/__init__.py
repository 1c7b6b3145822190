"""piddpm: physics-informed denoising diffusion models for fluorescence microscopy.

Sub-packages are laid out by responsibility (see ``docs/architecture.md``):
``optics`` and ``acquisition`` (pure torch physics), ``data``, ``networks``,
``diffusion``, ``baselines``, ``metrics``, ``io``, ``training``, ``restore``, ``cli``.
"""

__version__ = "0.1.0"


class PiddpmError(ValueError):
    """A user-facing error: bad input, bad configuration, missing file.

    The CLI prints its message without a traceback, so the message must name the
    offending file or value and say what is expected.
    """


def __getattr__(name):  # lazy: ``import piddpm`` stays cheap for the CLI
    if name == "restore":
        from piddpm.restore import restore

        return restore
    raise AttributeError(f"module 'piddpm' has no attribute {name!r}")
