"""pytest runs the course in quick mode: small data, small models, few steps (see README)."""

import os

# Set before any notebook kernel starts, so every kernel inherits them.
os.environ.setdefault("TINYLLM_QUICK", "1")
# A failed exercise check raises instead of only printing ✗, so a wrong worked solution in solutions/
# (or notebooks/) fails its notebook's test. Exercise stubs that are not written yet never raise.
os.environ["TINYLLM_STRICT_CHECKS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests build Hugging Face models from configs, never a hub
if "PYTEST_XDIST_WORKER" in os.environ:
    # One worker per core: several multi-threaded torch processes on the same cores thrash each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
