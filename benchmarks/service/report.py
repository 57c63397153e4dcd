"""Markdown tables from `benchmarks/out/service_*.json`, for benchmarks/RESULTS.md.

`python -m benchmarks.service.report` prints them; nothing is measured here.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.service.common import OUT_DIR


def load(name: str) -> Any:
    path = OUT_DIR / f"service_{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def header(data: Any) -> str:
    load_avg = ", ".join(f"{x:.2f}" for x in data["load_average_at_start"])
    steal = data.get("cpu_steal_share_over_run")
    return (
        f"`{data['command']}` — {data['date']}, HEAD `{data['git_head']}`"
        f"{' + uncommitted changes' if data['app_uncommitted_changes'] else ''}, "
        f"load average at start {load_avg}"
        + ("" if steal is None else f", CPU steal over the run {steal:.0%}")
    )


def scoring(data: Any) -> list[str]:
    out = [header(data), ""]
    for db in ("sqlite", "postgres"):
        if db not in data:
            continue
        part = data[db]
        limit = part["limit"]["windows_per_s_batch_256"]
        runs = part["limit"].get("bracketing_runs", [])
        spread = f", {min(runs):,.0f}–{max(runs):,.0f} over {len(runs)} runs" if runs else ""
        out += [
            f"**{db}** — limit (TrainedModel.score, batch 256, 1 thread, median of the runs "
            f"between cases{spread}): **{limit:,.0f} windows/s**; batch 1: "
            f"{part['limit']['before']['results'][0]['call_p50_ms']} ms a call. "
            "Each case's share is against the limit runs just before and after it; "
            "cases with rounds show medians.",
            "",
            "| wire | windows/request | concurrency | rounds | windows/s | share of limit | p50 ms "
            "| p99 ms | API CPU ms/request | client CPU | CPU steal |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in part["cases"]:
            steal = c.get("cpu_steal_share")
            out.append(
                f"| {c['wire']} | {c['windows_per_request']} | {c['concurrency']} | "
                f"{len(c.get('rounds', [])) or 1} | "
                f"{c['windows_per_s']:,.0f} | {c['share_of_limit']:.0%} | {c['p50_ms']:.2f} | "
                f"{c['p99_ms']:.2f} | {c['server_cpu_ms_per_request']} | "
                f"{c['client_cpu_share']:.0%} | {'' if steal is None else f'{steal:.0%}'} |"
            )
        out.append("")
    return out


def main() -> None:
    lines: list[str] = []
    if (data := load("scoring")) is not None:
        lines += scoring(data)
        cost = data["metrics_cost"]
        lines += [
            "Prometheus updates of one request (metrics_cost): "
            + "; ".join(
                f"{k}: {v['single_process_us_per_request']} µs single-process, "
                f"{v['multiprocess_us_per_request']} µs multiprocess"
                for k, v in cost.items()
            ),
            "",
        ]
    if (data := load("ingest")) is not None:
        m = data["median"]
        lines += [
            header(data),
            "",
            "| | rows/s (median) |",
            "|---|---|",
            f"| raw psycopg 3 COPY BINARY | {m['copy_rows_per_s']:,.0f} |",
            f"| API, first send (JSON, epoch seconds) | {m['api_first_rows_per_s']:,.0f} |",
            f"| API, re-send (all updates) | {m['api_resend_rows_per_s']:,.0f} |",
            f"| API, first send, ISO-8601 timestamps | "
            f"{data['first_send_iso_timestamps_rows_per_s']:,.0f} |",
            f"| API, first send, CSV | {data['first_send_csv_rows_per_s']:,.0f} |",
            "",
            f"API / COPY {m['api_share_of_copy']:.0%}; re-send / first send "
            f"{m['resend_over_first']:.2f}x (medians of per-repetition ratios).",
            "",
        ]
    if (data := load("retrain")) is not None:
        lines += [
            header(data),
            "",
            "| mode | idle p50 / p99 ms | training p50 / p99 ms | p99 ratio | trainer CPU |",
            "|---|---|---|---|---|",
        ]
        for mode in ("worker", "embedded"):
            if mode in data:
                r = data[mode]
                cpu = ", ".join(f"{b['trainer_cpu_share']:.0%}" for b in r["training"])
                lines.append(
                    f"| {mode} ({r['database']}) | {r['idle_p50_ms']} / {r['idle_p99_ms']} | "
                    f"{r['training_p50_ms']} / {r['training_p99_ms']} | {r['ratio']}x | {cpu} |"
                )
        lines.append("")
    if (data := load("growth")) is not None:
        lines += [
            header(data),
            "",
            "| stored points | append µs/point | overwrite µs/point | range score µs/window |",
            "|---|---|---|---|",
        ]
        for r in data["sizes"]:
            lines.append(
                f"| {r['stored_points']:,} | {r['append_us_per_point']} | "
                f"{r['overwrite_us_per_point']} | {r['range_score_us_per_window']} |"
            )
        lines += [
            "",
            "| points | windows | tracemalloc peak MiB | bytes/point | RSS peak above "
            "baseline MiB | bytes/point |",
            "|---|---|---|---|---|---|",
        ]
        for r in data["training_windows_memory"]:
            lines.append(
                f"| {r['points']:,} | {r['windows']:,} | "
                f"{r['tracemalloc_peak_bytes'] / 2**20:.1f} | {r['tracemalloc_bytes_per_point']} "
                f"| {r['rss_peak_above_baseline_bytes'] / 2**20:.1f} | "
                f"{r['rss_bytes_per_point']} |"
            )
        lines.append("")
    if (data := load("memory")) is not None:
        lines += [
            header(data),
            "",
            "| cache size | RSS start MiB | all 100 scored MiB | after c=8 load MiB | peak MiB "
            "| of which the scoring child MiB | 1st pass p50 ms | 2nd pass p50 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in data["runs"]:
            lines.append(
                f"| {r['model_cache_size']} | {r['rss_at_start_mib']} | "
                f"{r['rss_after_loading_all_mib']} | {r['rss_after_load_mib']} | "
                f"{r['rss_peak_mib']} | {r.get('scorer_rss_mib', '-')} | "
                f"{r['first_pass_ms']['p50']} | "
                f"{r['second_pass_ms']['p50']} |"
            )
        lines.append("")
    for path in sorted(OUT_DIR.glob("service_profile*.json")):
        data = json.loads(path.read_text())
        what = "GIL-holding samples" if data.get("gil_only") else "busy samples"
        lines += [header(data), "", f"Share of {what}:", ""]
        lines += [f"- {row['share_of_busy']:.0%} {row['stage']}" for row in data["busy_stages"]]
        lines.append("")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
