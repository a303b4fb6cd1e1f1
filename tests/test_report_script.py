"""The report's inlined Vega script is built once per vl-convert version, then read back."""

from __future__ import annotations

import mechwidgets.report.html as report


def test_vega_script_is_built_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHWIDGETS_CACHE", str(tmp_path))
    built: list[int] = []

    def bundle() -> str:
        built.append(1)
        return "var s = '</script>';"

    monkeypatch.setattr(report.vl_convert, "javascript_bundle", bundle)
    first, second = report.vega_script(), report.vega_script()
    assert first == second == "var s = '<\\/script>';"  # escaped, so it cannot close the tag
    assert built == [1]
    version = report.vl_convert.__version__
    assert [p.name for p in tmp_path.iterdir()] == [f"vl-convert-{version}.js"]
