"""The README's model-catalogue example is a catalogue the engine accepts."""

from __future__ import annotations

from pathlib import Path

from orchestration.llm.catalogue import load_catalogue

README = Path(__file__).resolve().parents[3] / "README.md"


def test_the_readme_catalogue_example_loads(tmp_path: Path) -> None:
    text = README.read_text()
    start = text.index("providers:\n  openai:")
    example = tmp_path / "models.yaml"
    example.write_text(text[start:text.index("```", start)])
    catalogue = load_catalogue(example)
    assert {"gpt-4o-mini", "local-small"} <= set(catalogue.models)
