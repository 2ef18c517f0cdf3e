"""Markers of the unit tests (the repository's conftest.py sets the environment)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium (deselect: -m 'not browser')")
