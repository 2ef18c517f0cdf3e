# Hand-written module: no notebook exports it, and tools/export.py never overwrites it.
"""TinyLLM: the library you build in the course, one chapter at a time.

Each module names, in its first line, the notebook that exports it. Import what you need:
`from tinyllm_lib.corpus import load_corpus`, `from tinyllm_lib.env import QUICK, pick_device`.
"""

__version__ = "0.1.0"
