"""The federated run report: figures, tables and the self-contained HTML page, from synthetic metrics."""

from __future__ import annotations

import copy
import io
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from anya_fl.simulation_report import (
    COMPARISON_COLUMNS,
    PRIMARY,
    comparison_rows,
    format_comparison_rows,
    node_epsilon_rows,
    node_names,
    plot_rounds,
    summarize,
    write_html_report,
)
from core.bitcoin.features import CHAIN_TASKS, TASKS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script> & budget spent"
ALL_TASKS = CHAIN_TASKS


def _global(task: str, rnd: int) -> dict[str, float]:
    g = 0.05 * rnd
    if task == "fraud":
        return {"pr_auc": 0.6 + g, "roc_auc": 0.8 + g, "f1": 0.5 + g, "recall_at_1pct_fpr": 0.4 + g, "positive_rate": 0.03}
    if task == "fee":
        return {"hit_rate": 0.8 + g, "median_overpay_sat_vb": 4.0 - rnd, "median_overpay_ratio": 1.8 - g,
                "hit_rate_k1": 0.7 + g, "hit_rate_k3": 0.8 + g, "hit_rate_k6": 0.9 + g, "median_overpay_sat_vb_k1": 5.0}
    return {"roc_auc": 0.85 + g, "pr_auc": 0.1 + g}


def make_metrics(rounds: int = 3, nodes: int = 3, tasks: tuple[str, ...] = ALL_TASKS, failure: bool = True) -> dict:
    """A metrics.json as the coordinator writes it; node "2" fails in round 2 (if ``failure``)."""
    history = []
    for rnd in range(1, rounds + 1):
        failed = []
        replied = {}
        for n in range(nodes):
            if failure and rnd == 2 and n == 2:
                failed.append({"node": str(n), "code": 4100, "reason": EVIL})
                continue
            eps = {f"{t}.epsilon": round(0.5 * rnd + 0.1 * n, 3) for t in tasks}
            replied[str(n)] = {
                "num-examples": 1000.0 * (n + 1),
                **eps,
                "epsilon-transactions": eps.get("fraud.epsilon", 0.0) + eps.get("anomaly.epsilon", 0.0),
                **{f"{t}.loss": 1.0 / rnd + 0.01 * n for t in tasks},
            }
        train = {"num-examples": sum(m["num-examples"] for m in replied.values()), "delta": 1e-5}
        for t in tasks:
            train[f"{t}.loss"] = 1.0 / rnd
            train[f"{t}.epsilon"] = max(m[f"{t}.epsilon"] for m in replied.values())
            train[f"{t}.seconds"] = 1.0
        train["epsilon-transactions"] = max(m["epsilon-transactions"] for m in replied.values())
        history.append({
            "round": rnd,
            "seconds": 10.0 + rnd,
            "train_seconds": 8.0 + rnd,
            "nodes_sampled": nodes,
            "nodes_replied": len(replied),
            "nodes_missing": 0,
            "nodes_failed": failed,
            "screening": [{"node": "77", "kind": "flagged", "reason": "fraud: update norm 9.8x the median",
                           "consecutive": rnd}] if rnd >= 2 else [],
            "train": train,
            "nodes": replied,
            "global": {t: _global(t, rnd) for t in tasks},
            "federated_eval": {"num-examples": 400.0, **{f"{t}.loss": 1.2 / rnd for t in tasks}},
        })
    config = {"rounds": rounds, "nodes": nodes, "strategy": "fedavg", "epsilon": 8.0, "delta": 1e-5, "seed": 0,
              "tasks": ",".join(tasks), "run-name": "<b>run</b>"}
    return {"config": config, "history": history}


COMPARISON = {
    "fraud": {
        "federated": {"pr_auc": 0.8123, "epsilon": 8.0},
        "centralized": {"pr_auc": 0.8456, "epsilon": 8.0},
        "local_only_mean": {"pr_auc": 0.6012, "epsilon": 8.0},
        "local_only": [{"node": 0, "profile": "exchange", "pr_auc": 0.5}, {"node": 1, "profile": "miner", "pr_auc": 0.7024}],
    },
    "fee": {
        "federated": {"hit_rate": 0.9311, "median_overpay_sat_vb": 3.1, "epsilon": 8.0},
        "centralized": {"hit_rate": 0.95, "median_overpay_sat_vb": 2.5, "epsilon": 8.0},
        "local_only_mean": {"hit_rate": 0.88, "median_overpay_sat_vb": 4.2, "epsilon": 8.0},
    },
    "anomaly": {
        "federated": {"roc_auc": 0.9, "epsilon": 8.0},
        "centralized": {"roc_auc": 0.9, "epsilon": 8.0},
        "local_only": [{"node": 0, "roc_auc": 0.7}, {"node": 1, "roc_auc": 0.8}],
    },
}


class _Checker(HTMLParser):
    """Collects <img> sources and checks that every non-void tag is closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.imgs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs).get("src", ""))
        if tag in ("script", "link", "iframe"):
            self.errors.append(f"unexpected <{tag}>")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> does not close {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Checker:
    checker = _Checker()
    checker.feed(path.read_text(encoding="utf-8"))
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    return checker


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[dict, list[Path], Path]:
    metrics = make_metrics()
    out = tmp_path_factory.mktemp("full")
    plots = plot_rounds(metrics, out)
    page = write_html_report(metrics, COMPARISON, plots, out / "report.html", "anya-fl <run> & report")
    return metrics, plots, page


def _assert_pngs(plots: list[Path]) -> None:
    for p in plots:
        assert p.exists() and p.read_bytes()[:8] == PNG_MAGIC, p


def test_plots_are_pngs(full) -> None:
    _, plots, _ = full
    assert {p.name for p in plots} == {"global_fraud.png", "global_fee.png", "global_anomaly.png",
                                       "epsilon.png", "nodes.png", "loss.png"}
    _assert_pngs(plots)
    assert not list(plots[0].parent.glob(".*.tmp"))  # atomic writes leave no temp files


def test_single_round_renders(tmp_path) -> None:
    plots = plot_rounds(make_metrics(rounds=1, failure=False), tmp_path)
    assert len(plots) == 6
    _assert_pngs(plots)


def test_fraud_only_run(tmp_path) -> None:
    metrics = make_metrics(tasks=("fraud",))
    plots = plot_rounds(metrics, tmp_path)
    assert {p.name for p in plots} == {"global_fraud.png", "epsilon.png", "nodes.png", "loss.png"}
    _assert_pngs(plots)
    page = write_html_report(metrics, None, plots, tmp_path / "report.html", "fraud only")
    checker = _parse(page)
    assert len(checker.imgs) == len(plots)
    text = page.read_text()
    assert "fee ε" not in text and "fraud ε" in text
    assert summarize(metrics)["max_epsilon"] == {"fraud": pytest.approx(1.7)}


def test_missing_optional_keys(tmp_path) -> None:
    metrics = {"config": {"tasks": "fraud,fee"}, "history": [{"round": 1, "global": {"fraud": {"pr_auc": 0.5}}}]}
    plots = plot_rounds(metrics, tmp_path)
    assert [p.name for p in plots] == ["global_fraud.png"]
    page = write_html_report(metrics, {}, plots, tmp_path / "r.html", "sparse")
    assert len(_parse(page).imgs) == 1
    s = summarize(metrics)
    assert s["final_global"] == {"fraud": {"pr_auc": 0.5}} and s["max_epsilon"] == {} and s["failed_replies"] == 0
    assert plot_rounds({"config": {}, "history": []}, tmp_path / "empty") == []


def test_html_report(full) -> None:
    _, plots, page = full
    text = page.read_text(encoding="utf-8")
    checker = _parse(page)
    assert len(checker.imgs) == len(plots) == 6
    assert all(src.startswith("data:image/png;base64,") for src in checker.imgs)
    assert text.count('<img src="data:image/png;base64,') == len(plots)
    # Text from the run is escaped, never markup.
    assert "<script>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; budget spent" in text
    assert EVIL in "".join(checker.text)
    assert "&lt;b&gt;run&lt;/b&gt;" in text and "anya-fl &lt;run&gt; &amp; report" in text
    # No external resources.
    assert "http://" not in text and "https://" not in text
    # Comparison numbers, relative difference, overpayment row and the per-node local-only table.
    for number in ("0.8123", "0.8456", "0.6012", "0.9311", "-3.9 %", "+24.0 %", "0.7024"):
        assert number in text, number
    assert "median_overpay_sat_vb (sat/vB, lower is better)" in text
    # Failure list names node, code and round; epsilon table has every node and task.
    assert "code 4100" in text and "round 2" in text
    # Screening events per round, with the reason.
    assert "Update screening" in text and "fraud: update norm 9.8x the median" in text
    for col in ("fraud ε", "fee ε", "anomaly ε", "transactions ε"):
        assert col in text


def test_comparison_rows() -> None:
    rows = comparison_rows(COMPARISON)
    assert all(len(r) == len(COMPARISON_COLUMNS) for r in rows)
    by = {(r[0], r[1].split(" ")[0]): r for r in rows}
    assert set(by) == {("fraud", "pr_auc"), ("fee", "hit_rate"), ("fee", "median_overpay_sat_vb"), ("anomaly", "roc_auc")}

    fraud = by["fraud", "pr_auc"]
    assert fraud[2:5] == [0.8123, 0.8456, 0.6012]
    assert fraud[5] == pytest.approx(0.8123 - 0.6012)
    assert fraud[6] == pytest.approx(100 * (0.8123 - 0.8456) / 0.8456)
    assert fraud[7] == 8.0

    over = by["fee", "median_overpay_sat_vb"]
    assert "lower is better" in over[1] and "sat/vB" in over[1]
    assert over[5] == pytest.approx(3.1 - 4.2) and over[6] == pytest.approx(24.0)

    anomaly = by["anomaly", "roc_auc"]  # no local_only_mean: the mean of the per-node rows
    assert anomaly[4] == pytest.approx(0.75) and anomaly[6] == pytest.approx(0.0)

    text = {r[0] + r[1]: r for r in format_comparison_rows(rows)}
    assert text["fraud" + fraud[1]][6] == "-3.9 %"


def test_comparison_edge_cases() -> None:
    rows = comparison_rows({
        "fraud": {"federated": {"pr_auc": 0.5, "epsilon": 8.0}, "centralized": {"pr_auc": 0.0, "epsilon": None}},
    })
    assert len(rows) == 1
    row = rows[0]
    assert row[4] is None and row[5] is None and row[6] is None  # no local-only; centralized 0: no relative
    assert row[7] == "federated 8, centralized non-private"
    assert format_comparison_rows(rows)[0][4:7] == ["–", "–", "–"]


def test_summarize(full) -> None:
    metrics, _, _ = full
    s = summarize(metrics)
    assert s["rounds"] == 3 and s["final_round"] == 3
    assert s["total_seconds"] == pytest.approx(11 + 12 + 13)
    assert s["failed_replies"] == 1 and s["missing_replies"] == 0
    assert s["final_global"]["fraud"] == pytest.approx(_global("fraud", 3))
    assert s["final_global"]["fee"]["median_overpay_sat_vb"] == pytest.approx(1.0)
    # Round 3: node 2 spends 0.5 * 3 + 0.2.
    assert s["max_epsilon"] == {t: pytest.approx(1.7) for t in ALL_TASKS}
    assert s["max_epsilon_transactions"] == pytest.approx(3.4)
    assert set(PRIMARY) == set(TASKS)


def test_history_out_of_order_and_nan(tmp_path) -> None:
    metrics = make_metrics(rounds=3, failure=False)
    metrics["history"] = list(reversed(copy.deepcopy(metrics["history"])))
    metrics["history"][0]["global"]["fraud"]["pr_auc"] = math.nan  # round 3, not a finite metric
    s = summarize(metrics)
    assert s["final_round"] == 3 and "pr_auc" not in s["final_global"]["fraud"]
    assert len(plot_rounds(metrics, tmp_path)) == 6


def test_results_and_figures_come_first_configuration_is_collapsed(full) -> None:
    _, plots, page = full
    text = page.read_text(encoding="utf-8")
    sections = re.findall(r"<h2>(.*?)</h2>", text)
    assert sections == ["Summary", "Federated vs centralized vs local-only", "Figures", "Local-only models, per node",
                        "Per round", "Privacy spent per node", "Node health per round", "Update screening",
                        "Node failures"]
    assert "Run configuration" not in sections  # not a section of its own: a collapsed <details>
    details = re.findall(r"<details>(.*?)</details>", text, flags=re.S)
    assert len(details) == 1 and details[0].startswith("<summary>Run configuration (8 settings)</summary>")
    assert "&lt;b&gt;run&lt;/b&gt;" in details[0] and "strategy" in details[0]
    outside = text.replace(details[0], "")
    assert "&lt;b&gt;run&lt;/b&gt;" not in outside  # the configuration table is nowhere else
    # every figure comes before the per-round and per-node tables and before the configuration
    last_img = text.rindex("<img ")
    assert last_img < text.index("<h2>Per round</h2>") < text.index("<details>")
    assert text.count("<img ") == len(plots)


def _outside(inner, outer) -> bool:
    return (inner.x0 >= outer.x0 - 0.5 and inner.y0 >= outer.y0 - 0.5 and inner.x1 <= outer.x1 + 0.5
            and inner.y1 <= outer.y1 + 0.5)


@pytest.mark.parametrize(("rounds", "tasks"), [(4, ALL_TASKS), (1, ("fraud",))])
def test_every_title_label_and_legend_lies_inside_the_image(rounds, tasks) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from anya_fl.simulation_report import figures

    seen = set()
    for name, fig in figures(make_metrics(rounds=rounds, tasks=tasks)):
        try:
            fig.savefig(io.BytesIO(), format="png", dpi=100)  # lays the figure out as the saved PNG is
            renderer = fig.canvas.get_renderer()
            suptitle = [t for t in fig.findobj(Text) if fig.get_suptitle() and t.get_text() == fig.get_suptitle()]
            titles = [*suptitle, *(ax.title for ax in fig.axes if ax.get_title())]
            assert titles, name
            labels = [lab for ax in fig.axes for lab in (ax.xaxis.label, ax.yaxis.label) if lab.get_text()]
            legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
            for t in [*titles, *labels, *legends]:
                box = t.get_window_extent(renderer)
                what = t.get_text() if isinstance(t, Text) else "legend"
                assert _outside(box, fig.bbox), f"{name}: {what!r} at {box} is cut off"
            seen.add(name)
        finally:
            plt.close(fig)
    assert {f"global_{t}.png" for t in tasks} | {"epsilon.png", "nodes.png", "loss.png"} == seen


def test_a_title_too_long_for_its_figure_is_wrapped_not_cut() -> None:
    import matplotlib.pyplot as plt

    from anya_fl.simulation_report import _figure

    fig, axes = _figure(figsize=(3.0, 2.5))
    try:
        title = fig.suptitle("fraud: global model per round, coordinator's held-out test set", wrap=True)
        axes[0][0].plot([1, 2], [1, 2])
        fig.savefig(io.BytesIO(), format="png", dpi=100)
        box = title.get_window_extent(fig.canvas.get_renderer())
        assert _outside(box, fig.bbox) and box.height > 1.5 * title.get_fontsize()  # two lines or more
    finally:
        plt.close(fig)


def test_nodes_are_named_in_one_place_for_every_table(tmp_path) -> None:
    metrics = make_metrics()
    ids = ["15450403177221490609", "13142786802073205879", "9007199254740993"]
    for rec in metrics["history"]:  # Flower's numeric ids; node "2" fails in round 2 and is flagged as "77"
        rec["nodes"] = {ids[int(k)]: v for k, v in rec["nodes"].items()}
        for f in rec["nodes_failed"]:
            f["node"] = ids[int(f["node"])]
        for e in rec["screening"]:
            e["node"] = ids[2]
    key_names = {ids[0]: "node-0", ids[1]: "node-1", ids[2]: "node-10"}
    names = node_names(metrics, key_names)
    assert names == key_names
    cols, rows = node_epsilon_rows(metrics, names)
    assert [r[0] for r in rows] == ["node-0", "node-1", "node-10"]  # sorted by name, 10 after 1
    assert rows[2][1] == 3 and rows[2][cols.index("fraud ε")] == pytest.approx(1.7)
    page = write_html_report(metrics, None, [], tmp_path / "report.html", "deployment", names=names)
    text = page.read_text()
    assert not any(i in text for i in ids)  # no numeric id anywhere: table, failures, screening
    assert "node <code>node-10</code> (code 4100)" in text and "<td class=\"text\">node-10</td>" in text
    assert summarize(metrics, names)["node_names"] == key_names
    # an id the coordinator cannot name stays the numeric id
    assert node_names(metrics, {ids[0]: "node-0"})[ids[1]] == ids[1]


def test_simulated_nodes_are_named_by_partition_and_profile() -> None:
    metrics = make_metrics(failure=False)
    for rec in metrics["history"]:
        for node_id, m in rec["nodes"].items():
            m["partition-id"] = float(node_id)
    names = node_names(metrics, profiles=["exchange", "miner", "merchant"])
    assert names == {"0": "node-0 (exchange)", "1": "node-1 (miner)", "2": "node-2 (merchant)", "77": "77"}
    # a deployment node reports partition-id -1: it gets no partition name, and a key name wins over one
    metrics["history"][-1]["nodes"]["1"]["partition-id"] = -1.0
    assert node_names(metrics, {"0": "node-5"}, ["exchange", "miner", "merchant"])["0"] == "node-5"
