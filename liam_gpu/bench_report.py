"""Turn a pytest-benchmark JSON file into the report of ``liam-gpu bench``.

Pure functions over plain data, so that they are tested with a synthetic JSON
file and no benchmark run:

- :func:`rows_from_pytest_benchmark` reads one row per benchmark (operation,
  shape, dtype, implementation, backend, median/min/max, flops, bytes) from the
  labels that ``bench/conftest.py``'s ``describe`` puts in ``extra_info``;
- :func:`add_ratios` adds each row's time over the best of its group (same
  operation, shape and dtype);
- :func:`render_markdown` writes the table with achieved GFLOP/s and GB/s as
  fractions of the measured ceilings;
- :func:`write_plots` draws time against size per operation and the speed-up of
  the GPU path over the CPU path (matplotlib, imported only here and optional).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

#: Fallback of ``impl`` for benchmarks that were not labelled with ``describe``.
UNLABELLED = "unlabelled"


@dataclass
class Row:
    """One benchmark's result, as the report shows it.

    Times are seconds; ``ratio`` is ``median`` over the best median of the
    group (1.0 for the fastest); ``gflops``/``gbps`` are achieved rates at the
    median time, ``None`` when the benchmark gave no count.
    """

    name: str
    op: str
    shape: str
    dtype: str
    impl: str
    backend: str
    median: float
    min: float
    max: float
    rounds: int
    flops: float | None = None
    bytes: float | None = None
    size: float | None = None
    ratio: float = 1.0
    gflops: float | None = None
    gbps: float | None = None
    gflops_fraction: float | None = None
    gbps_fraction: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Implementation and where it ran, e.g. ``liam_gpu (cuda)``."""
        return f"{self.impl} ({self.backend})"

    @property
    def group(self) -> tuple[str, str, str]:
        """What makes two rows comparable: operation, shape and dtype."""
        return (self.op, self.shape, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)


def _shape_text(shape: Any) -> str:
    if isinstance(shape, str):
        return shape
    if isinstance(shape, (list, tuple)):
        return "×".join(str(int(d)) for d in shape)
    return "" if shape is None else str(shape)


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def rows_from_pytest_benchmark(data: Mapping[str, Any]) -> list[Row]:
    """One :class:`Row` per entry of a pytest-benchmark JSON document.

    Parameters
    ----------
    data
        The parsed ``--benchmark-json`` file (``{"benchmarks": [...], ...}``).

    Returns
    -------
    list of Row
        Benchmarks without ``describe`` labels still appear: their operation is
        their pytest-benchmark group (or test name), their implementation
        ``"unlabelled"``, their backend the test's ``backend``/``device``
        parameter or ``"cpu"``.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("benchmarks"), list):
        raise ValueError("data must be a pytest-benchmark JSON document with a 'benchmarks' list")
    rows = []
    for bench in data["benchmarks"]:
        stats = bench.get("stats") or {}
        if "median" not in stats:
            continue  # a benchmark that errored before timing
        info = bench.get("extra_info") or {}
        params = bench.get("params") or {}
        name = str(bench.get("name", "?"))
        backend = str(info.get("backend") or params.get("backend") or params.get("device") or "cpu")
        if backend.startswith("cuda"):
            backend = "cuda"
        rows.append(
            Row(
                name=name,
                op=str(info.get("op") or bench.get("group") or name.split("[")[0]),
                shape=_shape_text(info.get("shape")),
                dtype=str(info.get("dtype") or ""),
                impl=str(info.get("impl") or UNLABELLED),
                backend=backend,
                median=float(stats["median"]),
                min=float(stats["min"]),
                max=float(stats["max"]),
                rounds=int(stats.get("rounds", 0)),
                flops=_optional_float(info.get("flops")),
                bytes=_optional_float(info.get("bytes")),
                size=_optional_float(info.get("size")),
                extra={k: v for k, v in info.items() if k not in _LABEL_KEYS},
            )
        )
    return rows


_LABEL_KEYS = frozenset({"op", "impl", "backend", "shape", "dtype", "flops", "bytes", "size"})


def add_ratios(rows: Sequence[Row]) -> None:
    """Set each row's ``ratio``: its median over the best median of its group."""
    best: dict[tuple[str, str, str], float] = {}
    for row in rows:
        best[row.group] = min(best.get(row.group, math.inf), row.median)
    for row in rows:
        fastest = best[row.group]
        row.ratio = row.median / fastest if fastest > 0 else math.nan


def add_rates(rows: Sequence[Row], ceilings: Mapping[str, Any]) -> None:
    """Set achieved GFLOP/s and GB/s and their fractions of the backend's ceilings.

    Parameters
    ----------
    rows
        The rows to complete in place.
    ceilings
        ``{backend: {"copy_gbps": float, "gemm_gflops": {dtype: float}}}`` as
        measured by :func:`liam_gpu.benchmarks.measure_ceilings`; a backend or
        dtype that was not measured leaves the fraction ``None``.
    """
    for row in rows:
        ceiling = ceilings.get(row.backend) or {}
        if row.flops is not None and row.median > 0:
            row.gflops = row.flops / row.median / 1e9
            peak = (ceiling.get("gemm_gflops") or {}).get(row.dtype)
            row.gflops_fraction = row.gflops / peak if peak else None
        if row.bytes is not None and row.median > 0:
            row.gbps = row.bytes / row.median / 1e9
            peak = ceiling.get("copy_gbps")
            row.gbps_fraction = row.gbps / peak if peak else None


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    """Operation, then problem size, shape and dtype, then fastest first."""
    return sorted(
        rows,
        key=lambda r: (r.op, r.size if r.size is not None else math.inf, r.shape, r.dtype, r.median),
    )


# --------------------------------------------------------------------------- skips


@dataclass
class Outcome:
    """A benchmark that produced no timing: skipped (with the reason) or failed."""

    test: str
    kind: str  # "skipped" or "failed"
    message: str


def outcomes_from_junit(path: Path) -> list[Outcome]:
    """Skipped and failed tests of a pytest ``--junitxml`` file (missing file: none)."""
    if not Path(path).is_file():
        return []
    tree = ET.parse(path)
    found = []
    for case in tree.iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        for child in case:
            if child.tag == "skipped":
                found.append(Outcome(test, "skipped", child.get("message", "").strip()))
            elif child.tag in ("failure", "error"):
                message = (child.get("message") or child.text or "").strip().splitlines()
                found.append(Outcome(test, "failed", message[0] if message else child.tag))
    return found


# --------------------------------------------------------------------------- markdown


def format_seconds(seconds: float) -> str:
    """A time with three significant digits and a unit (ns, µs, ms, s)."""
    if not math.isfinite(seconds):
        return "–"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _rate(value: float | None, fraction: float | None) -> str:
    if value is None:
        return "–"
    text = f"{value:.3g}"
    if fraction is None:
        return text
    return f"{text} (<1%)" if fraction < 0.005 else f"{text} ({fraction:.0%})"


def render_table(rows: Sequence[Row]) -> str:
    """The results table in Markdown (rows in the given order)."""
    lines = [
        "| operation | shape | dtype | implementation | median | min – max | ratio to best "
        "| GFLOP/s (of ceiling) | GB/s (of ceiling) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = "**1.00**" if r.ratio == 1.0 else f"{r.ratio:.2f}"
        lines.append(
            f"| {r.op} | {r.shape} | {r.dtype} | {r.label} | {format_seconds(r.median)} "
            f"| {format_seconds(r.min)} – {format_seconds(r.max)} | {ratio} "
            f"| {_rate(r.gflops, r.gflops_fraction)} | {_rate(r.gbps, r.gbps_fraction)} |"
        )
    return "\n".join(lines)


def render_ceilings(ceilings: Mapping[str, Any]) -> str:
    """The measured ceilings as a Markdown table (one row per backend and quantity)."""
    lines = ["| backend | quantity | measured | how |", "|---|---|---:|---|"]
    for backend, c in ceilings.items():
        how = c.get("how", {})
        if c.get("copy_gbps") is not None:
            lines.append(f"| {backend} | copy bandwidth | {c['copy_gbps']:.3g} GB/s | {how.get('copy', '')} |")
        for dtype, value in (c.get("gemm_gflops") or {}).items():
            lines.append(f"| {backend} | GEMM {dtype} | {value:.4g} GFLOP/s | {how.get('gemm', '')} |")
    return "\n".join(lines)


def render_markdown(
    rows: Sequence[Row],
    ceilings: Mapping[str, Any],
    meta: Mapping[str, Any],
    outcomes: Sequence[Outcome] = (),
    plots: Sequence[str] = (),
) -> str:
    """The whole ``results.md``: header, ceilings, table, skips and failures, plots.

    Parameters
    ----------
    rows
        Rows with ratios and rates filled in (:func:`add_ratios`, :func:`add_rates`).
    ceilings
        The measured ceilings per backend.
    meta
        Header facts: ``date``, ``command``, ``machine`` and ``versions`` (a mapping).
    outcomes
        Skipped and failed benchmarks.
    plots
        File names of the plots, relative to the Markdown file.
    """
    out = ["# liam-gpu benchmark results", ""]
    for key in ("date", "machine", "command", "backend", "quick"):
        if key in meta:
            out.append(f"- **{key}**: `{meta[key]}`" if key == "command" else f"- **{key}**: {meta[key]}")
    versions = meta.get("versions") or {}
    if versions:
        out.append("- **versions**: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    out += ["", "## Ceilings measured in this run", ""]
    out.append(render_ceilings(ceilings) if ceilings else "No ceilings were measured.")
    out += ["", "## Results", ""]
    if rows:
        out += [
            "Median over the rounds, with the fastest and slowest round; *ratio to best* is the median "
            "over the fastest median of the same operation, shape and dtype (1.00 = fastest). "
            "GFLOP/s and GB/s are achieved at the median, in brackets as a fraction of this run's "
            "ceiling for the same backend (and dtype, for GFLOP/s).",
            "",
            render_table(rows),
        ]
    else:
        out.append("No benchmark produced a timing.")
    skipped = [o for o in outcomes if o.kind == "skipped"]
    failed = [o for o in outcomes if o.kind == "failed"]
    if failed:
        out += ["", "## Failed", ""] + [f"- `{o.test}`: {o.message}" for o in failed]
    if skipped:
        out += ["", "## Skipped", ""] + [f"- `{o.test}`: {o.message}" for o in skipped]
    if plots:
        out += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- plots


def speedups(rows: Sequence[Row]) -> dict[tuple[str, str, str], list[tuple[float, float]]]:
    """CPU median over GPU median, per (operation, implementation, dtype), against size.

    Only rows with a size and both a ``cpu`` and a ``cuda`` result for the same
    operation, implementation, shape and dtype count.
    """
    by_key: dict[tuple[str, str, str, str], dict[str, Row]] = {}
    for r in rows:
        if r.size is not None and r.backend in ("cpu", "cuda"):
            by_key.setdefault((r.op, r.impl, r.dtype, r.shape), {})[r.backend] = r
    lines: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for (op, impl, dtype, _shape), pair in by_key.items():
        if "cpu" in pair and "cuda" in pair and pair["cuda"].median > 0:
            lines.setdefault((op, impl, dtype), []).append(
                (pair["cpu"].size, pair["cpu"].median / pair["cuda"].median)
            )
    return {k: sorted(v) for k, v in lines.items()}


def _file_stem(text: str) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in text.lower())
    return "_".join(part for part in keep.split("_") if part)[:80] or "plot"


def _bar_plot(plt: Any, op: str, op_rows: Sequence[Row], out_dir: Path) -> str:
    """Median time per implementation as bars, min–max as error bars; per shape, fastest first.

    For an operation measured at one size, or at shapes that a size cannot
    tell apart (4096×1024×1024 and 65536×256×256 are both 2³²).
    """
    shapes = sorted({r.shape for r in op_rows}, key=lambda s: min(r.size or 0 for r in op_rows if r.shape == s))
    ordered = sorted(op_rows, key=lambda r: (shapes.index(r.shape), r.median))
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.4 * len(ordered)))
    medians = [r.median for r in ordered]
    err = [[r.median - r.min for r in ordered], [r.max - r.median for r in ordered]]
    colors = [f"C{shapes.index(r.shape) % 10}" for r in ordered]
    ax.barh(range(len(ordered)), medians, xerr=err, capsize=3, color=colors, alpha=0.8)
    several = len(shapes) > 1
    labels = [(f"{r.shape}  " if several else "") + f"{r.label} {r.dtype}" for r in ordered]
    ax.set_yticks(range(len(ordered)), labels, fontsize="small")
    ax.invert_yaxis()  # first shape, fastest, on top
    ax.set_xscale("log")
    from matplotlib.ticker import LogLocator

    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))  # 2 and 5 only: all eight labels overlap
    ax.set_xlabel("median time (s)")
    ax.set_title(op if several else f"{op}  {ordered[0].shape}")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    name = f"time_{_file_stem(op)}.png"
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=100)
    plt.close(fig)
    return name


def write_plots(rows: Sequence[Row], out_dir: Path) -> list[str]:
    """Write PNG plots into ``out_dir``; return their file names.

    One ``time_<op>.png`` per operation (median time against size, log-log,
    one line per implementation, backend and dtype, the min–max range as error
    bars; bars per shape and implementation when the operation was measured at
    one size only, or at shapes of equal size) and ``speedup_gpu_over_cpu.png`` when some operation ran on both.
    Without matplotlib nothing is written and a note is printed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        print("liam-gpu bench: matplotlib is not installed, so no plots were drawn "
              "(pip install 'liam-gpu[bench]')")
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    ops: dict[str, list[Row]] = {}
    for r in rows:
        if r.size is not None:
            ops.setdefault(r.op, []).append(r)
    for op, op_rows in sorted(ops.items()):
        # A line over sizes only when each size is one shape; else bars per shape.
        if len({r.size for r in op_rows}) != len({r.shape for r in op_rows}) or len({r.size for r in op_rows}) == 1:
            written.append(_bar_plot(plt, op, op_rows, out_dir))
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        lines: dict[str, list[Row]] = {}
        for r in op_rows:
            lines.setdefault(f"{r.label} {r.dtype}".strip(), []).append(r)
        for label, line in sorted(lines.items()):
            line.sort(key=lambda r: r.size)
            xs = [r.size for r in line]
            ys = [r.median for r in line]
            err = [[r.median - r.min for r in line], [r.max - r.median for r in line]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("problem size (product of the shape)")
        ax.set_ylabel("median time (s)")
        ax.set_title(op)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        name = f"time_{_file_stem(op)}.png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(name)
    ratio_lines = speedups(rows)
    if ratio_lines:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for (op, impl, dtype), points in sorted(ratio_lines.items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{op}: {impl} {dtype}")
        ax.axhline(1.0, color="grey", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("problem size (product of the shape)")
        ax.set_ylabel("speed-up, CPU time / GPU time")
        ax.set_title("GPU path over CPU path")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(out_dir / "speedup_gpu_over_cpu.png", dpi=100)
        plt.close(fig)
        written.append("speedup_gpu_over_cpu.png")
    return written
