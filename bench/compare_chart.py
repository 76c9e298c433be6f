"""The chart of bench/compare.py: time against lake size, one panel per operation.

Run by compare.py with the bench venv's Python (matplotlib is there, not in the
project): python compare_chart.py results/compare.json results/compare.png
"""

import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

TOOLS = {"snapver": ("snapver", "tab:green"), "dvc-copy": ("DVC copy", "tab:red"),
         "dvc-reflink": ("DVC reflink", "tab:orange"), "git": ("Git floor (data not versioned)", "tab:gray")}
OPS = ("first version", "second version", "checkout first version", "restore one model file")


def main(src: str, dest: str) -> None:
    report = json.load(open(src))
    fig, axes = plt.subplots(1, len(OPS), figsize=(4.2 * len(OPS), 4.2), constrained_layout=True)
    for ax, op in zip(axes, OPS):
        for name, (title, color) in TOOLS.items():
            for shape, style in (("lake", dict(marker="o", linestyle="-")),
                                 ("small", dict(marker="s", linestyle="none", fillstyle="none", markersize=9))):
                points = sorted((s["data_bytes"] / 1e9, statistics.median(s["tools"][name]["samples_ms"][op]) / 1000)
                                for s in report["shapes"] if s["shape"] == shape and name in s["tools"]
                                and s["tools"][name]["samples_ms"][op])
                if points:
                    ax.plot(*zip(*points), color=color, label=title if shape == "lake" else None, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        # Ticks at the measured sizes, plain numbers: log-scale minor labels pile up on a narrow axis.
        ax.set_xticks(sorted({round(s["data_bytes"] / 1e9, 1) for s in report["shapes"] if s["shape"] == "lake"}))
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_title(op)
        ax.set_xlabel("data in the lake (GB)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds (median, cold cache)" if not report["args"]["warm"] else "seconds (median, warm)")
    small = [s["label"] for s in report["shapes"] if s["shape"] == "small"]
    handles, labels = axes[0].get_legend_handles_labels()
    if small:
        handles.append(plt.Line2D([], [], color="black", marker="s", fillstyle="none", linestyle="none"))
        labels.append("hollow squares: " + ", ".join(small))
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
    fig.suptitle(f"snapver vs DVC {report['dvc_version']} on Btrfs, {report['date']}")
    fig.savefig(dest, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:])
