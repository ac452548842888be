"""The benchmark's memory measurement: a fresh process per library, the first and the second pass."""

from benchmarks.memory import forward_memory


def test_both_libraries_report_both_passes(tiny_dpt_dir):
    for framework in ("mlx", "torch"):
        m = forward_memory(framework, str(tiny_dpt_dir), 2, (256, 256), "float32")
        assert m.error is None, m.error
        assert m.weights_mib > 0 and m.rss_after_load_mib > 0
        assert 0 <= m.rss_added_mib <= m.rss_added_second_mib  # the peak only grows
        assert (m.mlx_peak_mib is not None) == (framework == "mlx")


def test_a_failing_child_reports_its_error(tmp_path):
    m = forward_memory("mlx", str(tmp_path / "missing"), 1, (32, 32), "float32")
    assert m.error and m.rss_added_mib is None
