"""vichat: Vietnamese instruction-tuned chatbots, extensible through pluggy plugins."""

from .records import Record, VichatError

__all__ = ["Record", "VichatError", "__version__"]
__version__ = "0.1.0"
