import pytest
from helpers.tiny_models import tiny_loaded_llama


@pytest.fixture
def cli(monkeypatch):
    """swaa_core.cli.main over a tiny Llama; ``cli.loads`` counts model loads."""
    import swaa_core
    from swaa_core.cli import main

    loads = []
    monkeypatch.setattr(swaa_core, "load_model", lambda *a, **k: loads.append(1) or tiny_loaded_llama())
    main.loads = loads
    return main
