"""docs/benchmarks.md's GPU section: a link to docs/gpu.md (scripts/gpu_bench.py) when that page exists."""

from __future__ import annotations

from pathlib import Path

try:  # main moved the bench modules under vigil.tools while this branch was open
    from vigil.tools.bench_report import GPU_PAGE, gpu_section
except ImportError:
    from vigil.bench_report import GPU_PAGE, gpu_section


def test_gpu_section_links_the_measured_page_only_when_it_exists(tmp_path: Path) -> None:
    page = tmp_path / "gpu.md"
    missing = gpu_section(page)
    assert "Not measured: no GPU machine was available" in missing
    assert "gpu.md" not in missing
    page.write_text("# GPU inference\n")
    linked = gpu_section(page)
    assert "[gpu.md](gpu.md)" in linked
    assert "Not measured" not in linked
    assert GPU_PAGE.parent.name == "docs"
    assert (GPU_PAGE.parent.parent / "pyproject.toml").is_file()
